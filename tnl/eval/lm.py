"""One causal-LM view for evaluation, whichever way the weights arrive: a run's DeepSpeed checkpoint or an HF dir.

    lm = load_run(run_dir, tag=None, source="checkpoint" | "hf")   # a training run (latest complete checkpoint)
    lm = load_hf(hf_dir)                                           # any exported (or stock) HF causal-LM directory
    logits = lm.logits(input_ids)          # (B, T) int64 -> (B, T, V) float32; right padding is harmless (causal)
    lm.tokenizer.encode(text) / lm.eos_id  # the tokenizer the model was trained with

The checkpoint path builds `tnl.models.build_model(meta["model"])` and loads the consolidated fp32 weights through
tnl.checkpoint_format; the HF path uses AutoModelForCausalLM (trust_remote_code). Both must give the same numbers:
tests/test_eval.py checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tnl.checkpoint_format import CheckpointError, load_model
from tnl.ops import IGNORE_INDEX

log = logging.getLogger("tnl.eval")


class EvalError(ValueError):
    """Missing or inconsistent evaluation inputs (no checkpoint, no tokenizer, unknown task, bad file)."""


class _HFTokenizer:
    """encode(str) -> ids without special tokens, for a Hugging Face tokenizer directory."""

    def __init__(self, path: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.eos_id = self.tok.eos_token_id
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


@dataclass
class EvalLM:
    """A causal LM in eval mode plus what evaluation needs around it."""

    model: torch.nn.Module
    kind: str  # "checkpoint" (tnl.models training form) or "hf" (transformers causal LM)
    device: torch.device
    dtype: torch.dtype  # autocast dtype (float32: no autocast)
    tokenizer: Any = None  # .encode(str) -> list[int], or None when the model came without one
    eos_id: int | None = None
    info: dict = field(default_factory=dict)  # what was loaded (path, step, tokens, ...) for the JSON report
    tokenizer_json: Path | None = None  # the HF tokenizer.json that goes with the model, to check data dirs against

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 -> (B, T, V) float32 next-token logits."""
        ids = input_ids.to(self.device)
        with self._autocast():
            if self.kind == "checkpoint":
                out = self.model(ids)
            else:
                out = self.model(input_ids=ids, use_cache=False)
        return out.logits.float()

    @torch.no_grad()
    def loss_sum(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """Summed next-token NLL (nats) and the number of scored targets (IGNORE_INDEX = ignored); float64 accumulation.

        The checkpoint path asks the training model for its own (chunked) mean loss; the HF path computes the
        cross-entropy from full logits one row at a time: two independent computations of the same number."""
        targets = targets.to(self.device)
        count = int((targets != IGNORE_INDEX).sum())
        if count == 0:
            return 0.0, 0
        if self.kind == "checkpoint":
            with self._autocast():
                loss = self.model(input_ids.to(self.device), targets=targets).loss
            return float(loss.double()) * count, count
        logits = self.logits(input_ids)
        total = 0.0
        for row in range(logits.shape[0]):  # one row at a time bounds the fp32 log-softmax memory
            total += float(torch.nn.functional.cross_entropy(logits[row], targets[row], ignore_index=IGNORE_INDEX,
                                                             reduction="sum").double())
        return total, count


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """device: cpu | cuda[:i] | None (cuda when available); dtype: fp32 | bf16 | None (bf16 on CUDA, else fp32)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError("device cuda requested but CUDA is not available")
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype is None:
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in names:
        raise EvalError(f"dtype must be fp32 or bf16, got {dtype!r}")
    return dev, names[dtype]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_tokenizer(a: Path | None, b: Path | None) -> bool | None:
    """Whether two tokenizer.json files are identical (None when either is missing)."""
    if a is None or b is None or not a.is_file() or not b.is_file():
        return None
    return _sha(a) == _sha(b)


def load_hf(hf_dir: str | Path, device: str | None = None, dtype: str | None = None) -> EvalLM:
    """An HF causal-LM directory (TnlForCausalLM via trust_remote_code, or stock LlamaForCausalLM)."""
    from transformers import AutoModelForCausalLM

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise EvalError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    dev, dt = resolve_device(device, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True, dtype=torch.float32)
    model.to(dev).eval()
    tok_json = hf_dir / "tokenizer.json"
    try:
        tokenizer = _HFTokenizer(hf_dir)
    except (OSError, ValueError, TypeError):  # a directory without tokenizer files
        log.warning("%s has no loadable tokenizer: only pre-tokenized data can be evaluated", hf_dir)
        tokenizer = None
    eos = tokenizer.eos_id if tokenizer is not None else getattr(model.config, "eos_token_id", None)
    info = {"source": "hf", "path": str(hf_dir), "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters())}
    return EvalLM(model, "hf", dev, dt, tokenizer, eos, info, tok_json if tok_json.is_file() else None)


def load_checkpoint(run_dir: str | Path, tag: str | None = None, device: str | None = None,
                    dtype: str | None = None) -> EvalLM:
    """The latest (or `tag`) complete DeepSpeed checkpoint of a run, as a tnl.models training model."""
    from tnl.data import load_tokenizer

    ckpt_dir = Path(run_dir) / "checkpoints"
    try:
        model, meta, tag = load_model(ckpt_dir, tag)
    except CheckpointError as err:
        raise EvalError(str(err)) from None
    dev, dt = resolve_device(device, dtype)
    model.to(dev)
    tokenizer, tok_json, data_dir = None, None, meta.get("data_dir")
    if data_dir and Path(data_dir).is_dir():
        tokenizer = load_tokenizer(data_dir)
        tok_json = Path(data_dir) / "hf_tokenizer" / "tokenizer.json"
    else:
        log.warning("the run's data dir %s is gone: no tokenizer (text files and tasks need one)", data_dir)
    info = {"source": "checkpoint", "path": str(ckpt_dir / tag), "step": meta.get("step"),
            "tokens": meta.get("tokens"), "arch": meta["model"].get("arch"), "data_dir": data_dir,
            "parameters": sum(p.numel() for p in model.parameters())}
    eos = tokenizer.eos_id if tokenizer is not None else meta["model"].get("eos_token_id")
    return EvalLM(model, "checkpoint", dev, dt, tokenizer, eos, info, tok_json)


def load_run(run_dir: str | Path, tag: str | None = None, source: str = "checkpoint", device: str | None = None,
             dtype: str | None = None) -> EvalLM:
    """A training run's model: its checkpoint (`source="checkpoint"`) or its exported run_dir/hf (`"hf"`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"run dir {run_dir} does not exist")
    if source == "checkpoint":
        lm = load_checkpoint(run_dir, tag, device, dtype)
    elif source == "hf":
        if tag is not None:
            raise EvalError("tag selects a checkpoint; with source=hf the run's hf/ export is evaluated")
        lm = load_hf(run_dir / "hf", device, dtype)
    else:
        raise EvalError(f"source must be checkpoint or hf, got {source!r}")
    lm.info["run_dir"] = str(run_dir)
    return lm
