"""Training throughput against context length (the LA2 paper's Table 1): tokens/s/GPU and peak memory.

For each model (configs/model/<name>.yaml, or a path to such a file) and each context length T, one training step
is forward + backward + optimizer step of tnl.models.build_model(cfg) on random tokens, at a fixed number of tokens
per step (micro batch B = tokens / T; a context longer than --tokens runs with B = 1): fp32 master weights, bf16
autocast, fused AdamW, on one CUDA device. A configuration that runs out of memory is reported as OOM and the sweep
goes on (as does one that fails otherwise: status "error" with the message). Writes
benchmarks/results/training/speed_vs_length_<models>[_compile...][_<tag>]_<gpu>_<time>.json, .md and .png
(tokens/s against context) through results_io.

    python benchmarks/bench_train.py --models tnl_385m,llama_385m              # T = 1K, 2K, ..., 64K at 32K tokens
    python benchmarks/bench_train.py --models tnl_385m --seq-lens 2048 --compile --profile 3   # + top GPU kernels
    python benchmarks/bench_train.py --models tnl_385m --tokens 32768 --seq-lens 2048,8192,32768
    python benchmarks/bench_train.py --compile --models tnl_385m,llama_385m@flash,llama_385m@cudnn   # SDPA pinned
    python benchmarks/bench_train.py --cpu-smoke --out /tmp/bench              # tiny models, tiny sizes, on CPU
"""

import argparse
import contextlib
import gc
import os
import sys
import time
from pathlib import Path

# As scripts/train.py: expandable segments against fragmentation at long contexts (before CUDA starts).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import results_io  # noqa: E402  (beside this program)
import torch  # noqa: E402
from bench_models import label, load_model_cfg  # noqa: E402

DEFAULT_SEQ_LENS = "1024,2048,4096,8192,16384,32768,65536"


def measure(model, opt, vocab: int, B: int, T: int, device: torch.device, dtype, warmup: int, steps: int) -> dict:
    """`warmup` untimed steps, then `steps` timed ones between two device synchronizations; peak memory of all."""
    g = torch.Generator(device="cpu").manual_seed(T)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g).to(device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            loss = model(inputs, targets=targets).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    out = {"step_ms": 1000 * seconds / steps, "tokens_per_s": B * T * steps / seconds, "loss": float(loss)}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def profile_steps(model, opt, vocab: int, B: int, T: int, device, dtype, steps: int, top: int = 25) -> list[dict]:
    """The `top` GPU kernels by total time over `steps` training steps (torch.profiler): where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    from tnl.train.profile import top_kernels

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        measure(model, opt, vocab, B, T, device, dtype, 0, steps)
    return top_kernels(prof, steps, top)


SDPA_BACKENDS = ("flash", "cudnn", "efficient", "math")


@contextlib.contextmanager
def sdpa_context(backend: str | None):
    """torch's SDPA restricted to one backend (name@flash, name@cudnn, ...), or no restriction.

    With a pinned backend the compile caches are off: their keys do not include SDPA's backend flags, so a second
    pinned run of the same model reused the first one's compiled graphs (llama_385m@flash ran cuDNN's kernels
    after llama_385m@cudnn, H200, torch 2.11; benchmarks/NOTES.md)."""
    if not backend:
        yield
        return
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    with sdpa_kernel(kinds[backend]), inductor_config.patch(fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):
        yield


def bench_model(name: str, seq_lens: list[int], tokens: int, device, dtype, warmup: int, steps: int,
                grad_ckpt: bool, peak, compile_: bool = False, profile: int = 0, recompute: bool = False) -> list[dict]:
    """One model over the contexts. name: a model config, optionally @backend to pin SDPA's backend (LLaMA)."""
    base, _, sdpa = name.partition("@")
    if compile_:  # each model traces its own graphs (under its own SDPA backend: chosen when tracing)
        import torch._dynamo

        torch._dynamo.reset()
    with sdpa_context(sdpa):
        return _bench_model(name, base, seq_lens, tokens, device, dtype, warmup, steps, grad_ckpt, peak, compile_,
                            profile, recompute)


def _bench_model(name, base, seq_lens, tokens, device, dtype, warmup, steps, grad_ckpt, peak, compile_,
                 profile, recompute) -> list[dict]:
    from tnl.models import build_model, compile_blocks

    cfg = load_model_cfg(base)
    if grad_ckpt:
        cfg["gradient_checkpointing"] = True
    if recompute and cfg["arch"] == "tnl":
        cfg["recompute_elementwise"] = True
    torch.manual_seed(0)
    model = build_model(cfg, device=device)
    if compile_:
        compile_blocks(model)
    params = sum(p.numel() for p in model.parameters())
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **fused)
    rows = []
    for T in seq_lens:
        B = max(1, tokens // T)
        row = {"model": name, "arch": cfg["arch"], "parameters": params, "seq_len": T, "micro_batch": B,
               "tokens_per_step": B * T}
        try:
            row.update(measure(model, opt, cfg["vocab_size"], B, T, device, dtype, warmup, steps))
            fpt = model.flops_per_token(T)
            row["mfu"] = fpt * row["tokens_per_s"] / peak if peak else None
            row["status"] = "ok"
            if profile:
                row["profile"] = profile_steps(model, opt, cfg["vocab_size"], B, T, device, dtype, profile)
        except torch.OutOfMemoryError:
            row["status"] = "OOM"
        except Exception as err:  # one failing configuration (a backend, a compile) must not end the sweep
            row["status"] = "error"
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        # free what a failed step left (gradients, the exception's frames) before the next configuration
        opt.zero_grad(set_to_none=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        shown = row["status"]
        if row["status"] == "ok":
            shown = f"{row['tokens_per_s']:,.0f} tokens/s" + (
                f", peak {row['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in row else "")
        if row["status"] == "error":
            shown = row["error"]
        print(f"[bench_train] {name} T={T} B={B}: {shown}", file=sys.stderr, flush=True)
    del model, opt
    return rows


def markdown(rows: list[dict], models: list[str], seq_lens: list[int], meta: dict) -> str:
    by = {(r["model"], r["seq_len"]): r for r in rows}
    head = ["context"] + [f"{m} {col}" for m in models for col in ("tokens/s", "peak GiB", "MFU")]
    if len(models) >= 2:
        head.append(f"{models[0]} / {models[1]}" if len(models) == 2 else f"{models[0]} / fastest other")
    lines = [f"# Training throughput vs context ({meta['device_name']})", "",
             f"{meta['tokens_per_step']} tokens per step (micro batch = tokens / context, at least 1), "
             f"{meta['precision']}, {meta['optimizer']}; {meta['steps']} timed steps after {meta['warmup']} warm-up. "
             f"torch {meta['torch']}, triton {meta['triton']}. Command: `{meta['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in seq_lens:
        cells = [f"{T // 1024}K" if T % 1024 == 0 else str(T)]
        for m in models:
            r = by.get((m, T), {})
            if r.get("status") != "ok":
                cells += [r.get("status", ""), "", ""]
                continue
            mem = r.get("peak_mem_gib")
            cells += [f"{r['tokens_per_s']:,.0f}", "" if mem is None else f"{mem:.1f}",
                      "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"]
        if len(models) >= 2:
            a = by.get((models[0], T), {})
            others = [by[(m, T)]["tokens_per_s"] for m in models[1:] if by.get((m, T), {}).get("status") == "ok"]
            ok = a.get("status") == "ok" and others
            cells.append(f"{a['tokens_per_s'] / max(others):.2f}x" if ok else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for m in models:
        tps = [r["tokens_per_s"] for r in rows if r["model"] == m and r["status"] == "ok"]
        if tps:
            lines.append(f"- {m}: min {min(tps):,.0f}, max {max(tps):,.0f} tokens/s, max/min {max(tps) / min(tps):.3f}")
    from tnl.train.profile import kernel_table

    for r in rows:
        if r.get("profile"):
            title = f"Top GPU kernels, {r['model']} T={r['seq_len']} B={r['micro_batch']} (step {r['step_ms']:.1f} ms)"
            lines += [""] + kernel_table(r["profile"], title)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], models: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for m in models:
        pts = [(r["seq_len"], r["tokens_per_s"]) for r in rows if r["model"] == m and r["status"] == "ok"]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=m)
    ax.set_xscale("log", base=2)
    ticks = sorted({r["seq_len"] for r in rows})
    ax.set_xticks(ticks, [f"{t // 1024}K" if t % 1024 == 0 else str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("training tokens/s per GPU")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma list of configs/model names or yaml paths (default: tnl_385m,llama_385m; "
                                    "with --cpu-smoke: tnl_tiny,llama_tiny); NAME@flash / NAME@cudnn pins SDPA's "
                                    "backend (LLaMA)")
    p.add_argument("--seq-lens", default=DEFAULT_SEQ_LENS, help="comma list of context lengths")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step (micro batch = tokens / context)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (compile, autotune)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing on (gradient_checkpointing)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (LA2: one custom op)")
    p.add_argument("--recompute-elementwise", action="store_true",
                   help="TNL: model.recompute_elementwise (with --compile: keep only matmul and LA2 outputs)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS more steps and report the top GPU kernels")
    p.add_argument("--peak-flops", type=float, help="per-GPU peak FLOP/s for MFU (default: looked up by GPU name)")
    p.add_argument("--out", default=str(results_io.topic_dir("training")),
                   help="output folder (default benchmarks/results/training)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="on CPU in fp32: contexts 32, 64 with 128 tokens per step, 1 + 2 steps (a plumbing test)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.models = args.models or "tnl_tiny,llama_tiny"
        args.seq_lens, args.tokens, args.warmup, args.steps = "32,64", 128, 1, 2
    args.models = args.models or "tnl_385m,llama_385m"
    try:
        args.seq_lens = [int(x) for x in args.seq_lens.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seq-lens must be comma-separated integers, got {args.seq_lens!r}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or not args.seq_lens or min(args.seq_lens) < 1 or args.tokens < 1 or args.steps < 1:
        p.error("need at least one model and positive --seq-lens, --tokens and --steps")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        for m in args.models:
            base, at, sdpa = m.partition("@")
            if at and sdpa not in SDPA_BACKENDS:
                raise ValueError(f"model {m!r}: SDPA backend must be one of {', '.join(SDPA_BACKENDS)}")
            load_model_cfg(base)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        print("error: bench_train needs a CUDA GPU (use --cpu-smoke to test the plumbing on CPU)", file=sys.stderr)
        return 1
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    from tnl.train.metrics import peak_flops

    peak = peak_flops(device, args.peak_flops)
    facts = results_io.run_facts("benchmarks/bench_train.py", argv, device)
    rows = []
    for m in args.models:
        rows += bench_model(m, args.seq_lens, args.tokens, device, dtype, args.warmup, args.steps, args.grad_ckpt,
                            peak, args.compile, args.profile, args.recompute_elementwise)
    cuda = device.type == "cuda"
    meta = {**facts, "device_name": facts["gpu"], "tokens_per_step": args.tokens,
            "dtype": str(dtype).replace("torch.", ""),
            "precision": "bf16 autocast, fp32 master weights" if cuda else "fp32",
            "optimizer": "fused AdamW" if cuda else "foreach AdamW",
            "warmup": args.warmup, "steps": args.steps, "grad_ckpt": args.grad_ckpt, "compile": args.compile,
            "recompute_elementwise": args.recompute_elementwise, "peak_flops": peak}
    stem = results_io.write(args.out, what(args), meta, {"results": rows},
                            markdown(rows, args.models, args.seq_lens, meta), args.tag,
                            plot=lambda p: plot(rows, args.models, p, f"training throughput ({facts['gpu']})"))
    print(f"[bench_train] wrote {stem}.json/.md/.png", file=sys.stderr)
    return 0


def what(args) -> str:
    """speed_vs_length_<model>[_vs_<model>...] and the switches that change what was timed."""
    flags = [f for f, on in (("ckpt", args.grad_ckpt), ("compile", args.compile),
                             ("recompute", args.recompute_elementwise), ("profile", args.profile)) if on]
    return "_".join(["speed_vs_length", "_vs_".join(label(m) for m in args.models), *flags])


if __name__ == "__main__":
    sys.exit(main())
