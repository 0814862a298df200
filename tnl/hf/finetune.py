"""Fine-tune an exported checkpoint (TNL or LLaMA) with transformers' Trainer: what scripts/finetune_hf.py runs.

    python scripts/finetune_hf.py --model runs/tiny/hf --data notes/*.txt --out runs/tiny-ft --steps 200
    python scripts/finetune_hf.py --model runs/tiny/hf --hf-path user/dataset --hf-split train --out runs/ft

A folder tnl exported is an ordinary transformers model: AutoModelForCausalLM loads it (tnl's own TnlForCausalLM
where tnl is installed, the bundled copy with trust_remote_code elsewhere), the Trainer computes the loss from
`labels` (the model shifts them; with gradient accumulation it divides the summed token losses by the step's token
count, num_items_in_batch), gradient checkpointing is model.gradient_checkpointing_enable() (its successor name
activation_checkpointing_enable on transformers releases that deprecate it), and Trainer.save_model is
save_pretrained: the output loads with trust_remote_code where tnl is not installed, and generates.
Text comes from files (tnl.data's readers: .txt cut into chunks at paragraph breaks, .jsonl/.parquet rows) or a
Hugging Face dataset (tnl.data.hf_source), is tokenized with the folder's tokenizer, each document followed by EOS,
and cut into blocks of --seq-len tokens; only as much is read as --steps consume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("tnl.hf")


class FinetuneError(ValueError):
    """Bad input to the fine-tuning script (the CLI prints it as one line)."""


def _documents(args) -> tuple[str, object]:
    """(a description of the text, an iterator of its documents)."""
    from tnl.data import DataError
    from tnl.data.config import resolve_inputs

    try:
        if args.hf_path:
            from tnl.data import hf_source

            spec = hf_source.HfSpec.from_mapping({"path": args.hf_path, "name": args.hf_name,
                                                  "split": args.hf_split, "streaming": args.streaming})
            entry = hf_source.describe(spec, spec.split, args.text_field)
            return f"{spec.label} split {spec.split}", hf_source.iter_texts(spec, entry, args.text_field)
        from tnl.data.readers import iter_documents

        paths = resolve_inputs(tuple(args.data), "inputs")
        docs = (d for p in paths for d in iter_documents(p, args.text_field, None, "chunks", 4096))
        return ", ".join(Path(p).name for p in paths[:4]) + (" ..." if len(paths) > 4 else ""), docs
    except DataError as err:
        raise FinetuneError(str(err)) from None


def token_blocks(docs, tokenizer, seq_len: int, max_blocks: int):
    """(N, seq_len) int64 blocks of the documents' tokens, each document followed by EOS, N <= max_blocks."""
    import torch

    eos = tokenizer.eos_token_id
    if eos is None:
        raise FinetuneError("the model folder's tokenizer has no EOS token")
    need, buf = seq_len * max_blocks, []
    for doc in docs:
        buf += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
        if len(buf) >= need:
            break
    n = min(len(buf) // seq_len, max_blocks)
    if n == 0:
        raise FinetuneError(f"the text holds {len(buf)} tokens: not one block of --seq-len {seq_len}")
    return torch.tensor(buf[: n * seq_len], dtype=torch.long).view(n, seq_len)


class _Blocks:
    """A torch-style dataset of {"input_ids", "labels"} rows (labels = input_ids: the model shifts them)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def enable_checkpointing(model) -> None:
    """Gradient checkpointing through transformers' API (activation_checkpointing_enable where the installed
    release has it and deprecates gradient_checkpointing_enable, the name it keeps as an alias)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def finetune(args) -> dict:
    """Run the fine-tune described by parsed `args`; returns {out, steps, losses, tokens, gradient_checkpointing}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    import tnl.hf  # noqa: F401  (registers TNL with the Auto classes, so its own class loads the folder)

    model_dir, out = Path(args.model), Path(args.out)
    if not (model_dir / "config.json").is_file():
        raise FinetuneError(f"--model {model_dir}: not a Hugging Face model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model_dir)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"no tokenizer in {args.tokenizer or model_dir} ({err}); pass --tokenizer DIR") from None
    described, docs = _documents(args)
    steps = args.steps
    blocks = token_blocks(docs, tokenizer, args.seq_len, steps * args.batch_size * args.grad_accum)
    log.info("fine-tuning %s on %d blocks of %d tokens from %s", model_dir, len(blocks), args.seq_len, described)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if args.gradient_checkpointing:
        enable_checkpointing(model)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    targs = TrainingArguments(
        output_dir=str(out / "checkpoints" if args.save_every else out), max_steps=steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(0, min(args.warmup, steps - 1)),
        weight_decay=0.0, logging_steps=1, save_strategy="steps" if args.save_every else "no",
        save_steps=args.save_every or steps, report_to="none", seed=args.seed, bf16=bf16,
        dataloader_num_workers=0, disable_tqdm=args.no_progress)
    trainer = Trainer(model=model, args=targs, train_dataset=_Blocks(blocks), data_collator=default_data_collator)
    trainer.train()
    trainer.save_model(str(out))  # model.save_pretrained: config (auto_map), weights, modeling code
    tokenizer.save_pretrained(str(out))
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    tokens = steps * args.batch_size * args.grad_accum * args.seq_len
    _write_card(model, out, model_dir, described, steps, tokens, losses)
    return {"out": str(out), "steps": trainer.state.global_step, "losses": losses, "tokens": tokens,
            "gradient_checkpointing": checkpointing(model)}


def checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on, by the name the installed transformers uses."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(model, name))


def _write_card(model, out: Path, base: Path, described: str, steps: int, tokens: int, losses: list) -> None:
    """README.md of the fine-tuned folder (tnl.hf.card), for TNL and LLaMA alike."""
    from tnl.hf.card import CardInfo, model_card
    from tnl.models.config import ModelArgs

    c = model.config
    args = ModelArgs(arch="tnl" if c.model_type == "tnl" else "llama", vocab_size=c.vocab_size,
                     hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                     num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                     tie_word_embeddings=bool(c.tie_word_embeddings), lrpe_layers=tuple(getattr(c, "lrpe_layers", ())),
                     gate_rank=int(getattr(c, "gate_rank", 0)))
    notes = [f"fine-tuned from {base.name} with transformers' Trainer: {steps} steps, {tokens:,} tokens of "
             f"{described}"]
    if losses:
        notes.append(f"training loss {losses[0]:.4f} at the first step, {losses[-1]:.4f} at the last")
    info = CardInfo(name=out.resolve().name, step=steps, data=described, notes=notes)
    parameters = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(model_card(args, parameters, info), encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/finetune_hf.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Hugging Face model folder (e.g. a run's hf/ export)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", metavar="FILE", help=".txt/.jsonl/.parquet files or globs")
    src.add_argument("--hf-path", help="a Hugging Face dataset: Hub name, save_to_disk folder or dataset folder")
    p.add_argument("--hf-name", help="the dataset's config (subset)")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--streaming", action="store_true", help="stream the dataset's rows")
    p.add_argument("--text-field", default="text", help="the column / JSON field holding the text")
    p.add_argument("--out", required=True, help="output folder (save_pretrained + tokenizer + README.md)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10, help="warmup steps")
    p.add_argument("--save-every", type=int, default=0, help="Trainer checkpoints every N steps (0: only the end)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    for name in ("steps", "seq_len", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            print(f"finetune_hf: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        import accelerate  # noqa: F401  (transformers' Trainer needs it)
    except ImportError:
        print("finetune_hf: error: transformers' Trainer needs the accelerate package (pip install accelerate, "
              "or tnl's eval extra)", file=sys.stderr)
        return 2
    try:
        result = finetune(args)
    except FinetuneError as err:
        print(f"finetune_hf: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
