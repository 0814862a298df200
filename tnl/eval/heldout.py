"""Held-out loss and perplexity: token-weighted mean next-token NLL over a validation split or over text files.

    batches = val_batches(data_dir, seq_len, batch_size)         # tnl.data.PackedLoader(split="val"), once, in order
    batches = text_batches(paths, lm.tokenizer, lm.eos_id, ...)  # .txt/.jsonl/.parquet (.xz/.gz/...) documents
    result = heldout_loss(lm, batches)                           # {"loss", "perplexity", "tokens", "batches", ...}

loss = sum of NLL over every scored target / number of targets (nats), perplexity = exp(loss). Windows do not
overlap: each token is predicted once, from the tokens before it in its window (as in training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from tnl.eval.lm import EvalError, EvalLM
from tnl.ops import IGNORE_INDEX


def val_batches(data_dir: str | Path, seq_len: int, batch_size: int) -> tuple[Iterable[dict], int]:
    """The validation split of a prepared data dir (every sample once, in order) and its number of batches."""
    from tnl.data import DataError, PackedLoader

    try:
        loader = PackedLoader(data_dir, "val", seq_len, batch_size)
        return loader, len(loader)
    except DataError as err:
        raise EvalError(str(err)) from None


def _read_documents(path: Path, text_field: str) -> list[str]:
    """Documents of a .txt / .jsonl / .parquet file, plain or compressed (tnl.data's readers: a .txt file is one
    document, a .jsonl line one document with its text in `text_field`)."""
    from tnl.data import DataError
    from tnl.data.readers import iter_documents

    if not path.is_file():
        raise EvalError(f"text file {path} does not exist")
    try:
        return list(iter_documents(str(path), text_field))
    except DataError as err:
        raise EvalError(str(err)) from None


def text_tokens(paths: Sequence[str | Path], tokenizer, eos_id: int | None, text_field: str = "text") -> list[int]:
    """Documents of .txt/.jsonl/.parquet files tokenized into one stream, each followed by EOS (as in training)."""
    if tokenizer is None:
        raise EvalError("this model came without a tokenizer: text files cannot be tokenized")
    stream: list[int] = []
    for p in paths:
        for doc in _read_documents(Path(p), text_field):
            stream.extend(tokenizer.encode(doc))
            if eos_id is not None:
                stream.append(int(eos_id))
    return stream


def text_batches(paths: Sequence[str | Path], tokenizer, eos_id: int | None, seq_len: int, batch_size: int,
                 text_field: str = "text") -> tuple[list[dict], int]:
    """Tokenize documents (each followed by EOS, as in training) into one stream and cut it into windows of
    seq_len + 1 tokens that share one token (the last window may be shorter): every token but the first is scored."""
    if tokenizer is None:
        raise EvalError("this model came without a tokenizer: text files cannot be tokenized")
    if not paths:
        raise EvalError("no text files given")
    stream = text_tokens(paths, tokenizer, eos_id, text_field)
    if len(stream) < 2:
        raise EvalError(f"the text files {list(map(str, paths))} hold fewer than 2 tokens")
    windows = [stream[i:i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    batches = []
    for lo in range(0, len(windows), batch_size):
        group = windows[lo:lo + batch_size]
        width = max(len(w) for w in group) - 1
        ids = torch.zeros(len(group), width, dtype=torch.int64)
        targets = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.int64)
        for r, w in enumerate(group):
            ids[r, :len(w) - 1] = torch.tensor(w[:-1])
            targets[r, :len(w) - 1] = torch.tensor(w[1:])
        batches.append({"input_ids": ids, "targets": targets})
    return batches, len(batches)


def heldout_loss(lm: EvalLM, batches: Iterable[dict], total: int | None = None, max_batches: int = 0,
                 progress: bool = True) -> dict:
    """Token-weighted mean NLL over `batches` (at most max_batches of them when > 0), with a progress bar."""
    from tqdm import tqdm

    if max_batches and total is not None:
        total = min(total, max_batches)
    nll, count, n = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="eval", unit="batch", disable=not progress, dynamic_ncols=True)
    for batch in _limit(batches, max_batches):
        s, c = lm.loss_sum(batch["input_ids"], batch["targets"])
        nll, count, n = nll + s, count + c, n + 1
        bar.update(1)
        bar.set_postfix(loss=f"{nll / max(count, 1):.4f}", tokens=count)
    bar.close()
    if count == 0:
        raise EvalError("no tokens were scored (empty validation data)")
    loss = nll / count
    seconds = time.perf_counter() - t0
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, "batches": n,
            "seconds": round(seconds, 3), "tokens_per_s": count / max(seconds, 1e-9)}


def _limit(batches: Iterable[dict], max_batches: int) -> Iterator[dict]:
    for i, b in enumerate(batches):
        if max_batches and i >= max_batches:
            return
        yield b
