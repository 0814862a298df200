"""The model card (README.md) of an export: architecture, size, tokens trained, data and held-out loss.

export_pretrained writes it with what it is given (tnl.train.export passes a run's step, tokens, data manifest and
last validation loss); rows whose value is unknown are left out rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tnl.models.config import ModelArgs


@dataclass
class CardInfo:
    """What is known about how a checkpoint was trained (every field optional)."""

    name: str | None = None  # the card's title (default: the architecture)
    step: int | None = None  # optimizer steps
    tokens: int | None = None  # training tokens seen
    data: str | None = None  # one line: the data set and its source(s)
    data_tokens: dict[str, int] = field(default_factory=dict)  # split -> tokens of the prepared data
    val_loss: float | None = None  # held-out loss (nats per token)
    val_step: int | None = None  # the step it was measured at
    notes: list[str] = field(default_factory=list)  # extra lines under "Training"


def architecture(args: ModelArgs) -> str:
    """One line naming the architecture and its shape."""
    shape = (f"{args.num_hidden_layers} layers, width {args.hidden_size}, {args.num_attention_heads} heads, "
             f"vocabulary {args.vocab_size}, {'tied' if args.tie_word_embeddings else 'untied'} embeddings")
    if args.arch == "tnl":
        gate = (f", rank-{args.gate_rank} sigmoid output gate (TNL3)" if args.gate_rank else "")
        lrpe = ", ".join(map(str, args.lrpe_layers)) or "none"
        return (f"TransNormerLLM (TNL) on Lightning Attention-2: {shape}, SGLU width {args.intermediate_size}, "
                f"LRPE in layer(s) {lrpe}{gate}")
    return f"LLaMA (stock transformers LlamaForCausalLM): {shape}, SwiGLU width {args.intermediate_size}, RoPE"


def model_card(args: ModelArgs, parameters: int, info: CardInfo | None = None) -> str:
    """README.md text: YAML front matter for the Hub, a table of the facts, and how to load the model."""
    info = info or CardInfo()
    tnl = args.arch == "tnl"
    rows = [("architecture", architecture(args)), ("parameters", f"{parameters:,} ({parameters / 1e6:.2f}M)")]
    if info.tokens is not None:
        rows.append(("tokens trained", f"{info.tokens:,}" + (f" ({info.step:,} steps)" if info.step else "")))
    if info.data:
        sizes = ", ".join(f"{k} {v:,} tokens" for k, v in info.data_tokens.items())
        rows.append(("data", info.data + (f" ({sizes})" if sizes else "")))
    if info.val_loss is not None and math.isfinite(info.val_loss):
        at = f" at step {info.val_step:,}" if info.val_step is not None else ""
        rows.append(("held-out loss", f"{info.val_loss:.4f} nats/token (perplexity {math.exp(info.val_loss):.2f})"
                                      f"{at}"))
    tags = ["tnl", "transnormerllm", "linear-attention", "lightning-attention"] if tnl else ["tnl", "llama"]
    load = ('AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)  # bundled modeling code: '
            'needs torch + transformers only' if tnl else 'AutoModelForCausalLM.from_pretrained(path)')
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:",
             *(f"- {t}" for t in tags), "---", "", f"# {info.name or ('TNL' if tnl else 'LLaMA')}", "",
             "A causal language model trained with tnl, the TransNormerLLM pretraining framework." if tnl else
             "A LLaMA baseline trained with tnl (the same trainer, data and tokenizer as its TNL twin).", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    if info.notes:
        lines += ["## Training", "", *(f"- {n}" for n in info.notes), ""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'path = "path/to/this/folder"  # or its Hub repo id', f"model = {load}",
              "tok = AutoTokenizer.from_pretrained(path)",
              'ids = tok("The meaning of", return_tensors="pt").input_ids',
              "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))", "```", ""]
    if tnl:
        lines += ["generate() prefills with the chunked Lightning Attention-2 kernel and decodes one token at a time "
                  "from the recurrent state (constant memory and time per token). Triton, when installed on a CUDA "
                  "machine, runs the fast kernels; elsewhere a pure-torch path computes the same function.", ""]
    return "\n".join(lines)
