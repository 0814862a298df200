"""Held-out loss at several evaluation contexts (length extrapolation), each token scored once per context.

    stream = val_stream(data_dir)                          # the validation split as one token stream (documents
                                                           # EOS-separated, as in training)
    sweep = context_sweep(lm, stream, [512, 1024, 2048, 4096, 8192, 16384])
    # {"windows": "disjoint", "tokens": N, "results": [{"context", "loss", "perplexity", "by_position": [...]}, ...]}

Windows are DISJOINT: for context L the first N + 1 tokens of the stream are cut into N / L windows of L inputs
(consecutive windows share one token: a window's last target is the next window's first input), so every one of the
same N targets is scored exactly once at every context. N is the largest multiple of every context that the stream
holds (at most max_tokens): the numbers of different contexts are over the same tokens and can be compared directly.
A token at position p of its window is predicted from the p tokens before it in that window, so the mean context of
a scored token is about L / 2: a model that uses long context well gets LOWER loss at larger L, one that breaks past
its training length gets higher. `by_position` splits each context's loss by the position of the target in its
window (buckets [0, c1), [c1, c2), ... at the sorted contexts), which shows where a model stops coping.

The NLL of each token is computed from the model's logits (bf16 under autocast on CUDA, then fp32 log-softmax: the
same arithmetic as the training model's own eval loss) and summed in float64.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tnl.eval.lm import EvalError, EvalLM

log = logging.getLogger("tnl.eval")
WINDOWS = "disjoint"


def val_stream(data_dir: str | Path, split: str = "val") -> np.ndarray:
    """The tokens of a prepared data dir's split, shard after shard, as one int64 array."""
    from tnl.data import read_manifest

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise EvalError(f"{data_dir} is not a prepared data dir (no readable manifest.json)")
    if split not in manifest.get("splits", {}):
        raise EvalError(f"{data_dir} has no {split!r} split")
    dtype = np.dtype(manifest["dtype"])
    parts = []
    for shard in manifest["splits"][split]["shards"]:
        path = data_dir / shard["path"]
        try:
            parts.append(np.fromfile(path, dtype=dtype, count=int(shard["tokens"])).astype(np.int64))
        except (OSError, ValueError) as err:
            raise EvalError(f"cannot read shard {path}: {err}") from None
        if parts[-1].size != int(shard["tokens"]):
            raise EvalError(f"shard {path} holds {parts[-1].size} tokens, its index says {shard['tokens']}")
    if not parts:
        raise EvalError(f"{data_dir} {split} split has no shards")
    return np.concatenate(parts)


def text_stream(paths: Sequence[str | Path], tokenizer, eos_id: int | None, text_field: str = "text") -> np.ndarray:
    """Documents of .txt/.jsonl/.parquet files tokenized into one stream, each followed by EOS (as in training)."""
    from tnl.eval.heldout import text_tokens

    return np.asarray(text_tokens(paths, tokenizer, eos_id, text_field), dtype=np.int64)


def parse_contexts(text: str) -> list[int]:
    """'512,1K,2048,16k' -> [512, 1024, 2048, 16384] (sorted, unique); K = 1024."""
    out = set()
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1024 if part.endswith("k") else 1
        try:
            value = int(part[:-1] if mult > 1 else part) * mult
        except ValueError:
            raise EvalError(f"contexts must be comma-separated positive integers (K = 1024), got {text!r}") from None
        if value < 1:
            raise EvalError(f"contexts must be positive, got {value} in {text!r}")
        out.add(value)
    if not out:
        raise EvalError(f"no context lengths in {text!r}")
    return sorted(out)


def scored_tokens(stream_len: int, contexts: Sequence[int], max_tokens: int = 0) -> int:
    """N: the largest multiple of every context with N + 1 <= stream_len (and N <= max_tokens when > 0)."""
    step = math.lcm(*contexts)
    limit = stream_len - 1 if max_tokens <= 0 else min(stream_len - 1, max_tokens)
    n = (limit // step) * step
    if n <= 0:
        raise EvalError(f"the evaluation text holds {stream_len} tokens: fewer than the {step + 1} needed for one "
                        f"window of every context {list(contexts)} (lcm {step}); use shorter contexts or more text")
    return n


def _bucket_edges(contexts: Sequence[int]) -> list[int]:
    return [0] + sorted(contexts)


def context_loss(lm: EvalLM, stream: np.ndarray, context: int, n_tokens: int, edges: Sequence[int],
                 tokens_per_batch: int = 16384, progress: bool = True) -> dict:
    """Loss over the first n_tokens targets of `stream` in disjoint windows of `context` inputs, split by position."""
    from tqdm import tqdm

    if n_tokens % context:
        raise EvalError(f"{n_tokens} scored tokens are not a whole number of {context}-token windows")
    windows = n_tokens // context
    per_batch = max(1, tokens_per_batch // context)
    data = torch.from_numpy(np.ascontiguousarray(stream[:n_tokens + 1]))
    bucket_of = torch.bucketize(torch.arange(context), torch.tensor(list(edges[1:])), right=True)  # (L,)
    n_buckets = len(edges) - 1
    sums = torch.zeros(n_buckets, dtype=torch.float64, device=lm.device)
    bucket_of = bucket_of.to(lm.device)
    counts = torch.bincount(bucket_of, minlength=n_buckets)[:n_buckets].to(torch.int64) * windows
    t0 = time.perf_counter()
    bar = tqdm(total=windows, desc=f"context {context}", unit="win", disable=not progress, dynamic_ncols=True)
    for lo in range(0, windows, per_batch):
        hi = min(windows, lo + per_batch)
        chunk = data[lo * context:hi * context + 1]
        ids = chunk[:-1].view(hi - lo, context)
        targets = chunk[1:].view(hi - lo, context)
        logits = lm.logits(ids)
        for r in range(hi - lo):  # one row at a time bounds the fp32 log-softmax memory
            nll = torch.nn.functional.cross_entropy(logits[r], targets[r].to(logits.device), reduction="none")
            sums.index_add_(0, bucket_of.to(nll.device), nll.double())
        bar.update(hi - lo)
        if progress:
            bar.set_postfix(loss=f"{float(sums.sum()) / max(1, (hi * context)):.4f}")
    bar.close()
    sums = sums.cpu()
    seconds = time.perf_counter() - t0
    loss = float(sums.sum()) / n_tokens
    by_position = []
    for b in range(n_buckets):
        if edges[b] >= context:
            break
        c = int(counts[b])
        bl = float(sums[b]) / c
        by_position.append({"from": edges[b], "to": min(edges[b + 1], context), "tokens": c, "loss": bl,
                            "perplexity": math.exp(min(bl, 700.0))})
    return {"context": context, "loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": n_tokens,
            "windows": windows, "seconds": round(seconds, 3), "tokens_per_s": n_tokens / max(seconds, 1e-9),
            "by_position": by_position}


def context_sweep(lm: EvalLM, stream: np.ndarray, contexts: Sequence[int], max_tokens: int = 0,
                  tokens_per_batch: int = 16384, progress: bool = True) -> dict:
    """context_loss at every context over the same N targets (see the module docstring)."""
    contexts = sorted(set(int(c) for c in contexts))
    if not contexts or contexts[0] < 1:
        raise EvalError(f"contexts must be positive integers, got {list(contexts)}")
    if tokens_per_batch < 1:
        raise EvalError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
    n = scored_tokens(len(stream), contexts, max_tokens)
    edges = _bucket_edges(contexts)
    results = []
    for i, c in enumerate(contexts, 1):
        results.append(context_loss(lm, stream, c, n, edges, tokens_per_batch, progress))
        r = results[-1]
        log.info("context %d (%d/%d): loss %.4f, perplexity %.2f over %d tokens in %.1fs (%.0f tokens/s)", c, i,
                 len(contexts), r["loss"], r["perplexity"], n, r["seconds"], r["tokens_per_s"])
    return {"windows": WINDOWS, "tokens": n, "stream_tokens": int(len(stream)), "contexts": contexts,
            "position_edges": edges, "results": results}
