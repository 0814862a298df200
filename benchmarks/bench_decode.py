"""Decode latency, ms per generated token, of TNL (recurrent state, O(1) per token) vs LLaMA (KV cache).

    python benchmarks/bench_decode.py --tnl tnl_385m --llama llama_385m --contexts 1024 8192 32768 131072 \
        --batches 1 16

TNL is timed twice on CUDA: through generate's path (an eager forward per token) and with GraphDecoder (one CUDA
graph replay per token). For every (model, batch, context): random weights in bf16, a random prompt of `context`
tokens prefilled in chunks of 16384 / batch tokens (the cache carried between chunks, bounding activation and mask
memory), then `--steps` single-token forwards timed after `--warmup` ones (CUDA synchronised). Out-of-memory cells
are recorded as "OOM". Writes benchmarks/results/decode/decode_<tnl>_vs_<llama>[_<tag>]_<gpu>_<time>.json and .md
through results_io, with two targets checked: TNL flat within 10% across contexts, and >= 5x faster than LLaMA at
32K.

With --throughput-batch B (e.g. 64) the same files get a second table, generated tokens/s at batch B for every
--throughput-contexts, of TNL (GraphDecoder) against LLaMA decoding into transformers' static KV cache, eager and
(on CUDA) torch.compile'd; see decode_throughput.py. --no-latency measures that table alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import decode_throughput  # beside this program
import results_io
import torch
from bench_models import label, model_args

from tnl.hf.export import llama_config_from_args, tnl_config_from_args  # (after bench_models: this checkout's tnl)
from tnl.hf.graph_decode import GraphDecoder
from tnl.hf.modeling_tnl import _CACHE_KEY, TnlForCausalLM


def build_hf(args, device, dtype):
    """Random-weight HF model of a ModelArgs: TnlForCausalLM, or transformers' LlamaForCausalLM on SDPA."""
    if args.arch == "tnl":
        model = TnlForCausalLM(tnl_config_from_args(args))
    else:
        from transformers import LlamaForCausalLM

        config = llama_config_from_args(args)
        config.max_position_embeddings = max(config.max_position_embeddings, 1 << 18)
        config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_ms_per_token(model, batch: int, context: int, steps: int, warmup: int, device, chunk: int) -> float:
    """Prefill `context` random tokens (in chunks), then time single-token decode steps; ms per step."""
    vocab = model.config.vocab_size
    cache = None
    for s in range(0, context, chunk):
        ids = torch.randint(0, vocab, (batch, min(chunk, context - s)), device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{_CACHE_KEY: cache})
        cache = out[_CACHE_KEY]
    tok = out.logits[:, -1:].argmax(-1)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        out = model(input_ids=tok, use_cache=True, logits_to_keep=1, **{_CACHE_KEY: cache})
        cache = out[_CACHE_KEY]
        tok = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0 / steps


@torch.no_grad()
def graph_decode_ms_per_token(model, batch: int, context: int, steps: int, warmup: int, device, chunk: int) -> float:
    """Same measurement with TNL's GraphDecoder (the whole step replayed as one CUDA graph on GPU)."""
    dec = GraphDecoder(model, batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    tok = dec.prefill(ids, chunk).argmax(-1)
    for i in range(max(1, warmup) + steps):
        if i == max(1, warmup):
            _sync(device)
            t0 = time.perf_counter()
        tok = dec.step(tok).argmax(-1)
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0 / steps


def run(tnl_name, llama_name, contexts, batches, steps=32, warmup=4, device=None, dtype=torch.bfloat16,
        prefill_tokens=16384, tnl_graph=None, argv=None) -> dict:
    """{"meta": run facts and settings, "rows": one per (model, batch, context), "checks": the targets' lines}."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = {**results_io.run_facts("benchmarks/bench_decode.py", argv, device), "dtype": str(dtype),
            "steps": steps, "warmup": warmup, "prefill_tokens": prefill_tokens}
    tnl_graph = torch.device(device).type == "cuda" if tnl_graph is None else tnl_graph
    variants = [(tnl_name, tnl_name, decode_ms_per_token)]
    if tnl_graph:
        variants.append((tnl_name + "+cudagraph", tnl_name, graph_decode_ms_per_token))
    variants.append((llama_name, llama_name, decode_ms_per_token))
    variants = variants if contexts and batches else []  # no latency table asked: build no model
    rows = []
    for shown, name, measure in variants:
        args = model_args(name)
        model = build_hf(args, device, dtype)
        for batch in batches:
            for context in contexts:
                chunk = max(1, min(context, prefill_tokens // batch))
                try:
                    ms = measure(model, batch, context, steps, warmup, device, chunk)
                except torch.OutOfMemoryError:
                    ms = "OOM"
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
                rows.append({"model": shown, "arch": args.arch, "batch": batch, "context": context,
                             "ms_per_token": ms})
                print(json.dumps(rows[-1]), flush=True)
        del model
    checks = _checks(rows, tnl_name, llama_name, contexts, batches)
    if tnl_graph:
        checks += _checks(rows, tnl_name + "+cudagraph", llama_name, contexts, batches)
    return {"meta": meta, "rows": rows, "checks": checks}


def _checks(rows, tnl_name, llama_name, contexts, batches) -> list[str]:
    get = {(r["model"], r["batch"], r["context"]): r["ms_per_token"] for r in rows}
    out = []
    for b in batches:
        tnl = [get.get((tnl_name, b, c)) for c in contexts]
        tnl = [t for t in tnl if isinstance(t, float)]
        if tnl:
            spread = max(tnl) / min(tnl) - 1
            out.append(f"batch {b}: {tnl_name} max/min - 1 across contexts = {spread:.1%} (target <= 10%: "
                       f"{'PASS' if spread <= 0.10 else 'FAIL'})")
        c = 32768
        t, l = get.get((tnl_name, b, c)), get.get((llama_name, b, c))
        if isinstance(t, float) and isinstance(l, float):
            out.append(f"batch {b}: {llama_name} / {tnl_name} at 32K = {l / t:.1f}x "
                       f"(target >= 5x: {'PASS' if l / t >= 5 else 'FAIL'})")
    return out


def markdown(result: dict) -> str:
    """The latency table and its checks, then (when measured) the throughput table."""
    env, rows = result["meta"], result["rows"]
    contexts = sorted({r["context"] for r in rows})
    lines = [f"# Decode latency (ms/token), {env['gpu']}, {env['dtype']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}; {env['steps']} timed steps after "
             f"{env['warmup']} warm-up; command: `{env['command']}`", ""]
    if rows:
        lines += ["| model | batch | " + " | ".join(f"ctx {c}" for c in contexts) + " |",
                  "|---|---|" + "---|" * len(contexts)]
    for (model, batch) in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        cells = {r["context"]: r["ms_per_token"] for r in rows if r["model"] == model and r["batch"] == batch}
        fmt = lambda v: v if isinstance(v, str) else f"{v:.2f}"
        lines.append(f"| {model} | {batch} | " + " | ".join(fmt(cells.get(c, "-")) for c in contexts) + " |")
    lines += [""] + [f"- {c}" for c in result["checks"]]
    if result.get("throughput"):
        lines += [""] + decode_throughput.markdown(result["throughput"])
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tnl", default="tnl_385m")
    p.add_argument("--llama", default="llama_385m")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=str(results_io.topic_dir("decode")),
                   help="output folder (default benchmarks/results/decode)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    p.add_argument("--tnl-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="also time TNL with GraphDecoder (one CUDA graph per step); default: on CUDA")
    p.add_argument("--prefill-tokens", type=int, default=16384,
                   help="tokens per prefill chunk over the whole batch (a chunk is this / batch per sequence)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the ms/token table (--no-latency: the throughput table alone)")
    p.add_argument("--throughput-batch", type=int, default=0,
                   help="batch of the tokens/s table, e.g. 64 (default 0: no throughput table)")
    p.add_argument("--throughput-contexts", type=int, nargs="+", default=None, help="default: --contexts")
    p.add_argument("--throughput-steps", type=int, default=None, help="timed steps per cell; default: --steps")
    p.add_argument("--llama-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="throughput: also LLaMA with its static-cache decode step torch.compile'd; default: on CUDA")
    a = p.parse_args(argv)
    try:
        model_args(a.tnl), model_args(a.llama)
        for name, v in (("--steps", a.steps), ("--prefill-tokens", a.prefill_tokens),
                        ("--throughput-steps", a.throughput_steps), ("--throughput-batch", a.throughput_batch or None)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be positive, got {v}")
        if not a.latency and not a.throughput_batch:
            raise ValueError("--no-latency leaves nothing to measure without --throughput-batch")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dtype, device = getattr(torch, a.dtype), a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = run(a.tnl, a.llama, a.contexts if a.latency else [], a.batches, a.steps, a.warmup, device, dtype,
                 a.prefill_tokens, tnl_graph=a.tnl_graph, argv=argv)
    payload = {"rows": result["rows"], "checks": result["checks"]}
    if a.throughput_batch:
        result["throughput"] = payload["throughput"] = decode_throughput.run_throughput(
            build_hf, a.tnl, a.llama, a.throughput_contexts or a.contexts, a.throughput_batch,
            a.throughput_steps or a.steps, a.warmup, device, dtype, a.prefill_tokens,
            a.llama_compile)
    stem = results_io.write(a.out, f"decode_{label(a.tnl)}_vs_{label(a.llama)}", result["meta"], payload,
                            markdown(result), a.tag)
    print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
