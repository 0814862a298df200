"""Batched decode throughput, generated tokens/s, of TNL vs LLaMA with a static KV cache (bench_decode's second table).

For each context: random weights, a random prompt of `context` tokens per sequence prefilled in chunks, then `steps`
greedy decode steps of the whole batch timed after `warmup` ones; tokens/s = batch x steps / seconds.

- TNL through GraphDecoder: its fixed-shape recurrent step is one CUDA graph replay on CUDA, eager elsewhere.
- LLaMA (transformers' LlamaForCausalLM on SDPA) decoding into transformers' StaticCache, sized once for
  context + warmup + steps, so that no step allocates; eager, and on CUDA also with the decode step compiled by
  torch.compile(mode="reduce-overhead") (CUDA graphs), the setup transformers' inference-optimisation guide gives for
  a static cache. The prefill stays eager, as that guide advises.

Out-of-memory cells are "OOM"; a compiled cell that fails for another reason is "ERR" with the error in the row.
"""

from __future__ import annotations

import inspect
import json
import sys
import time

import torch
from bench_models import model_args  # beside this module

from tnl.hf.graph_decode import GraphDecoder, greedy_tokens
from tnl.hf.modeling_tnl import _CACHE_KEY


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def static_cache(model, batch: int, max_len: int):
    """transformers' StaticCache for `model`, `max_len` positions per sequence. transformers 5 sizes its layers on the
    first update; older signatures that ask for the batch, device and dtype up front get them."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    kw = {"config": model.config, "max_cache_len": max_len}
    p = next(model.parameters())
    for name, value in (("max_batch_size", batch), ("batch_size", batch), ("device", p.device), ("dtype", p.dtype)):
        if name in params:
            kw[name] = value
    return StaticCache(**kw)


class StaticLlamaDecoder:
    """Greedy/sampled decoding of a LlamaForCausalLM into a preallocated StaticCache (same API as GraphDecoder).

        dec = StaticLlamaDecoder(model, batch_size=B, max_len=T + new_tokens, compile=True)
        logits = dec.prefill(input_ids, chunk)      # (B, T) -> (B, V), eager, `chunk` tokens at a time
        logits = dec.step(next_tokens)              # (B,) or (B, 1) -> (B, V)

    Positions are passed explicitly (position_ids, and cache_position where the installed transformers takes it), so
    the step has the same shapes at every call and compiles once."""

    def __init__(self, model, batch_size: int, max_len: int, compile: bool = False):
        self.model, self.B, self.max_len = model, batch_size, max_len
        self.device = next(model.parameters()).device
        self.cache = static_cache(model, batch_size, max_len)
        self.cache_position = "cache_position" in inspect.signature(model.forward).parameters
        self.decode = torch.compile(model.forward, mode="reduce-overhead") if compile else model.forward
        self.seen = 0

    def _forward(self, fn, ids):
        T = ids.shape[1]
        if self.seen + T > self.max_len:
            raise ValueError(f"StaticLlamaDecoder holds {self.max_len} positions; {self.seen} used, {T} more asked")
        pos = torch.arange(self.seen, self.seen + T, device=self.device)
        kw = {"cache_position": pos} if self.cache_position else {}
        out = fn(input_ids=ids, position_ids=pos[None].expand(ids.shape[0], T), use_cache=True, logits_to_keep=1,
                 **{_CACHE_KEY: self.cache}, **kw)
        self.seen += T
        return out.logits[:, -1]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if input_ids.shape[0] != self.B:
            raise ValueError(f"StaticLlamaDecoder was built for batch {self.B}, got input_ids of batch "
                             f"{input_ids.shape[0]}")
        chunk = chunk or input_ids.shape[1]
        for s in range(0, input_ids.shape[1], chunk):
            logits = self._forward(self.model.forward, input_ids[:, s:s + chunk].to(self.device))
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward(self.decode, tokens.reshape(self.B, 1))

    def greedy(self, input_ids: torch.Tensor, max_new_tokens: int, chunk: int | None = None) -> torch.Tensor:
        """(B, T) -> (B, T + max_new_tokens)."""
        return greedy_tokens(self, input_ids, max_new_tokens, chunk=chunk)


def _timed(dec, batch, context, steps, warmup, device, chunk) -> float:
    """Prefill a random prompt through `dec`, then `steps` greedy steps after `warmup`; generated tokens/s."""
    ids = torch.randint(0, dec.model.config.vocab_size, (batch, context), device=device)
    tok = dec.prefill(ids, chunk).argmax(-1)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        tok = dec.step(tok).argmax(-1)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def tnl_tokens_per_s(model, batch, context, steps, warmup, device, chunk) -> float:
    # at least one warm-up step: GraphDecoder captures its graph on the first step
    return _timed(GraphDecoder(model, batch), batch, context, steps, max(1, warmup), device, chunk)


def llama_static_tokens_per_s(model, batch, context, steps, warmup, device, chunk, compile=False) -> float:
    if compile:
        torch._dynamo.reset()  # each context's cache shape compiled afresh (no recompile limit across cells)
        warmup = max(3, warmup)  # reduce-overhead: warm-up runs, then the graph is recorded, then replayed
    dec = StaticLlamaDecoder(model, batch, context + warmup + steps, compile=compile)
    return _timed(dec, batch, context, steps, warmup, device, chunk)


def run_throughput(build, tnl_name, llama_name, contexts, batch, steps, warmup, device, dtype, prefill_tokens,
                   llama_compile=None) -> dict:
    """{"batch": B, "steps": N, "warmup": W, "rows": one per (model, context) with tokens_per_s, "checks": ratio
    lines}. build(ModelArgs, device, dtype): the random-weight HF model (bench_decode.build_hf)."""

    cuda = torch.device(device).type == "cuda"
    llama_compile = cuda if llama_compile is None else llama_compile
    variants = [(tnl_name + ("+cudagraph" if cuda else ""), tnl_name, tnl_tokens_per_s, False),
                (llama_name + "+static", llama_name, llama_static_tokens_per_s, False)]
    if llama_compile:
        variants.append((llama_name + "+static+compile", llama_name, llama_static_tokens_per_s, True))
    rows = []
    for shown, name, measure, compiled in variants:
        args = model_args(name)
        model = build(args, device, dtype)
        for context in contexts:
            chunk = max(1, min(context, prefill_tokens // batch))
            row = {"model": shown, "arch": args.arch, "batch": batch, "context": context}
            try:
                kw = {"compile": True} if compiled else {}
                row["tokens_per_s"] = measure(model, batch, context, steps, warmup, device, chunk, **kw)
            except torch.OutOfMemoryError:
                row["tokens_per_s"] = "OOM"
            except Exception as err:  # a compile failure of one cell: recorded, the other cells still measured
                if not compiled:
                    raise
                row["tokens_per_s"], row["error"] = "ERR", f"{type(err).__name__}: {err}"[:500]
            if cuda:
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True, file=sys.stderr if "error" in row else sys.stdout)
        del model
    return {"batch": batch, "steps": steps, "warmup": warmup, "llama_compile": llama_compile, "rows": rows,
            "checks": _checks(rows, variants)}


def _checks(rows, variants) -> list[str]:
    get = {(r["model"], r["context"]): r["tokens_per_s"] for r in rows}
    tnl, llamas = variants[0][0], [v[0] for v in variants[1:]]
    out = []
    for context in dict.fromkeys(r["context"] for r in rows):
        t = get.get((tnl, context))
        best = [(get[(m, context)], m) for m in llamas if isinstance(get.get((m, context)), float)]
        if isinstance(t, float) and best:
            l, m = max(best)
            out.append(f"context {context}: {tnl} / fastest LLaMA ({m}) = {t / l:.1f}x tokens/s")
        elif isinstance(t, float):
            out.append(f"context {context}: {tnl} {t:.0f} tokens/s; no LLaMA variant ran (OOM or error)")
    return out


def markdown(tp: dict) -> list[str]:
    """The throughput table (one row per model, one column per context) and its lines."""
    rows = tp["rows"]
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    lines = [f"## Decode throughput (generated tokens/s), batch {tp['batch']}", "",
             f"{tp['steps']} timed steps of the whole batch after {tp['warmup']} warm-up (3 for compiled LLaMA); "
             "LLaMA decodes into a static KV cache sized for the context", "",
             "| model | batch | " + " | ".join(f"ctx {c}" for c in contexts) + " |",
             "|---|---|" + "---|" * len(contexts)]
    fmt = lambda v: v if isinstance(v, str) else f"{v:.0f}"
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = {r["context"]: r["tokens_per_s"] for r in rows if r["model"] == model}
        lines.append(f"| {model} | {tp['batch']} | " + " | ".join(fmt(cells.get(c, "-")) for c in contexts) + " |")
    errors = [f"- {r['model']} ctx {r['context']}: {r['error']}" for r in rows if "error" in r]
    return lines + [""] + [f"- {c}" for c in tp["checks"]] + errors
