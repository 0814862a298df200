"""Benchmark Lightning Attention-2 (tnl_kernels) against FlashAttention-2, OpenNLPLab lightning-attn and fla.

Forward and forward+backward medians (triton.testing.do_bench, CUDA events) and peak extra memory of one
forward+backward, at a fixed number of tokens per batch (B = tokens / T), for a sweep over T and over head dims.
Each implementation gets its inputs in its own native layout, made outside the timed region:
tnl and fla (B, T, H, D); SDPA flash and OpenNLPLab (B, H, T, D). A competitor that fails to import or run is
reported as missing/failed. Writes benchmarks/results/kernels/kernels_vs_<impls>[_<tag>]_<gpu>_<time>.json and .md
through results_io, rewritten after every row (a run cut off keeps its numbers).

    python benchmarks/bench_kernels.py                    # full sweep (T 1K..64K at D=128; D in 64,128,256 at T=4K)
    python benchmarks/bench_kernels.py --seq-lens 2048 --head-dims 128 --impls tnl,fla
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

import results_io  # beside this program
import torch

IMPLS = ("tnl", "fla", "lightning_attn", "sdpa_flash")
TIMING = "triton.testing.do_bench median (CUDA events), inputs made outside the timed region"
PEAK = "max_memory_allocated during one fwd+bwd minus allocated before (inputs excluded)"


def make_impl(name, B, T, H, D, E, dtype, slope, packed_cu=None):
    """Returns (inputs, fn(inputs) -> output tensor) for one implementation, inputs made in its native layout."""
    dev = "cuda"

    def rnd(*shape):
        return (torch.randn(*shape, device=dev, dtype=torch.float32) * 0.5).to(dtype).requires_grad_()

    if name == "tnl":
        # through tnl.ops' backend: the kernel settings in force (TNL_LA2_ALGO, ...) reach it, as the run facts say
        from tnl.ops.triton_backend import triton_fn

        la2 = triton_fn("lightning_attn_triton", torch.device(dev))
        x = [rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, E)]
        return x, lambda x: la2(x[0], x[1], x[2], slope, None, False, packed_cu)[0]
    if name == "fla":
        from fla.ops.simple_gla import chunk_simple_gla

        x = [rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, E)]
        g_gamma = -slope
        cu = None if packed_cu is None else packed_cu.long()
        return x, lambda x: chunk_simple_gla(x[0], x[1], x[2], g_gamma=g_gamma, scale=1.0, cu_seqlens=cu)[0]
    if name == "lightning_attn":
        from lightning_attn.ops import lightning_attn_func

        x = [rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, E)]
        s = slope.reshape(H, 1, 1).contiguous()
        return x, lambda x: lightning_attn_func(x[0], x[1], x[2], s)
    if name == "sdpa_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        x = [rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, E)]

        def fn(x):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa(x[0], x[1], x[2], is_causal=True)

        return x, fn
    raise ValueError(f"unknown implementation {name!r}; choose from {IMPLS}")


def measure(name, B, T, H, D, E, dtype, packed_cu=None, warmup=25, rep=100, cooldown=0.0):
    from triton.testing import do_bench

    slope = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], device="cuda", dtype=torch.float32)
    x, fn = make_impl(name, B, T, H, D, E, dtype, slope, packed_cu)
    do = torch.randn_like(fn(x))

    def fwd():
        with torch.no_grad():
            fn(x)

    def fwd_bwd():
        torch.autograd.grad(fn(x), x, do)

    def settle():  # the GPU idles `cooldown` seconds before each timing (see --cooldown)
        torch.cuda.synchronize()
        time.sleep(cooldown)

    res = {}
    settle()
    res["fwd_ms"] = do_bench(fwd, warmup=warmup, rep=rep, return_mode="median")
    settle()
    res["fwd_bwd_ms"] = do_bench(fwd_bwd, warmup=warmup, rep=rep, return_mode="median")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    res["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return res


def packed_cu_seqlens(total, mean_len, seed=0):
    """Document boundaries of random lengths (exponential, mean `mean_len`) packed into `total` tokens."""
    g = torch.Generator().manual_seed(seed)
    lens = []
    while sum(lens) < total:
        lens.append(max(1, int(torch.empty(1).exponential_(1.0 / mean_len, generator=g).item())))
    lens[-1] -= sum(lens) - total
    lens = [n for n in lens if n > 0]
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def fmt(v):
    return "-" if v is None else f"{v:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per batch; B = tokens / T")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq-lens", default="1024,2048,4096,8192,16384,32768,65536")
    p.add_argument("--head-dims", default="64,128,256", help="head-dim sweep (D = E) at --dim-sweep-T")
    p.add_argument("--dim-sweep-T", type=int, default=4096)
    p.add_argument("--packed-mean-len", type=int, default=2048, help="tnl/fla with cu_seqlens at T=tokens; 0: skip")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--dim-impls", default="tnl,sdpa_flash,lightning_attn",
                   help="implementations in the head-dim sweep (fla autotunes anew for every head dim: slow)")
    p.add_argument("--cooldown", type=float, default=3.0,
                   help="seconds the GPU idles before each timing, so that no timing starts in the power-capped "
                        "state a long run leaves behind: on an H100, tnl at T = 32K measured 2.37 ms right after "
                        "FA2 at 16K and 2.10 after a 3 s pause (benchmarks/NOTES.md); 0 for quick runs")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--out", default=str(results_io.topic_dir("kernels")),
                   help="output folder (default benchmarks/results/kernels)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    p.add_argument("--render-log", metavar="LOG", help="only rebuild the tables from a run's printed rows")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="with --render-log: run facts")
    args = p.parse_args(argv)
    if args.render_log:
        meta = {"gpu": "?", "torch": "?", "triton": "?", "cuda": "?", "time": "?", "command": "?",
                "tokens": args.tokens, "heads": args.heads, "dtype": args.dtype, "timing": TIMING,
                "peak_extra_mib": PEAK}
        meta.update(kv.split("=", 1) for kv in args.meta)
        render_log(args.render_log, meta, Path(args.out), args.heads, args.tag)
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    impls = [s for s in args.impls.split(",") if s]
    dim_impls = [s for s in args.dim_impls.split(",") if s and s in impls]
    H = args.heads
    shapes = [("seq", T, 128) for T in map(int, args.seq_lens.split(","))]
    shapes += [("dim", args.dim_sweep_T, d) for d in map(int, args.head_dims.split(",")) if d]
    if args.packed_mean_len:
        shapes.append(("packed", args.tokens, 128))

    meta = {
        **results_io.run_facts("benchmarks/bench_kernels.py", argv),
        "tokens": args.tokens, "heads": H, "dtype": args.dtype, "decay": "ALiBi slopes 2^(-8(h+1)/H)",
        "timing": f"{TIMING}, after {args.cooldown:g} s of GPU idle", "peak_extra_mib": PEAK,
    }
    rows = []
    for kind, T, Dh in shapes:
        B = max(1, args.tokens // T)
        cu = None
        if kind == "packed":
            B, cu = 1, packed_cu_seqlens(T, args.packed_mean_len)
        for name in impls:
            if (kind == "packed" and name not in ("tnl", "fla")) or (kind == "dim" and name not in dim_impls):
                continue
            row = {"kind": kind, "impl": name, "B": B, "T": T, "H": H, "D": Dh, "E": Dh}
            if cu is not None:
                row["docs"] = cu.numel() - 1
            try:
                row.update(measure(name, B, T, H, Dh, Dh, dtype, cu, cooldown=args.cooldown))
            except ImportError as e:
                row["error"] = f"missing: {e}"
            except Exception as e:  # a failing competitor is reported, not fatal
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                torch.cuda.empty_cache()
            rows.append(row)
            status = row.get("error") or (f"fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwd_bwd_ms']:.3f} ms  "
                                          f"peak +{row['peak_extra_mib']:.0f} MiB")
            print(f"[{kind}] {name:15s} B={B:3d} T={T:6d} D={Dh:3d}: {status}", flush=True)
            write_results(Path(args.out), meta, rows, shapes, impls, args.tag)

    write_results(Path(args.out), meta, rows, shapes, impls, args.tag, final=True)
    return 0


SHORT = {"tnl": "tnl", "fla": "fla", "lightning_attn": "opennlplab", "sdpa_flash": "fa2"}  # names in file names


def what(impls) -> str:
    """kernels_vs_<competitors> (tnl against the others timed), kernels_tnl_only, or kernels_<impls> without tnl."""
    others = [SHORT.get(i, i) for i in impls if i != "tnl"]
    if "tnl" not in impls:
        return "kernels_" + "_".join(others)
    return "kernels_vs_" + "_".join(others) if others else "kernels_tnl_only"


def write_results(out, meta, rows, shapes, impls, tag="", final=False):
    """JSON + markdown table of the rows so far (rewritten after every row, so a cut-off run keeps its numbers)."""
    md = [f"# LA2 kernel benchmark: {meta['gpu']}", "",
          f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, {meta['time']}; "
          f"{meta['tokens']} tokens per batch (B = {meta['tokens']}/T), H = {meta['heads']}, {meta['dtype']}, causal, "
          "per-head decay.",
          f"Command: `{meta['command']}`. {meta['timing']}; peak extra memory = {meta['peak_extra_mib']}.", ""]
    if meta.get("note"):
        md += [meta["note"], ""]
    for title, key in (("forward + backward (ms)", "fwd_bwd_ms"), ("forward (ms)", "fwd_ms"),
                       ("peak extra memory of forward + backward (MiB)", "peak_extra_mib")):
        md += [f"## {title}", "", "| shape | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
        for kind, T, Dh in shapes:
            cells = []
            for name in impls:
                r = next((r for r in rows if (r["kind"], r["T"], r["D"], r["impl"]) == (kind, T, Dh, name)), None)
                cells.append("" if r is None else ("n/a" if "error" in r else fmt(r[key])))
            if not any(cells):
                continue
            label = {"seq": f"T={T} D={Dh}", "dim": f"D=E={Dh} T={T}", "packed": f"packed T={T} D={Dh}"}[kind]
            md.append(f"| {label} | " + " | ".join(cells) + " |")
        md.append("")
    errs = [r for r in rows if "error" in r]
    if errs:
        md += ["## Missing / failed", ""] + [f"- {r['impl']} ({r['kind']} T={r['T']} D={r['D']}): {r['error']}"
                                               for r in errs] + [""]
    stem = results_io.write(out, what(impls), meta, {"rows": rows}, md, tag, echo=final)
    if final:
        print(f"wrote {stem}.json and .md")


ROW_RE = re.compile(r"^\[(\w+)\] (\S+)\s+B=\s*(\d+) T=\s*(\d+) D=\s*(\d+): (.*)$")
NUM_RE = re.compile(r"fwd ([\d.]+) ms\s+fwd\+bwd ([\d.]+) ms\s+peak \+(\d+) MiB")


def render_log(log_path, meta, out, heads, tag=""):
    """Rebuild the JSON + markdown from the per-row lines a run printed (for a run cut off before it wrote them)."""
    rows, shapes, impls = [], [], []
    for line in Path(log_path).read_text().splitlines():
        m = ROW_RE.match(line)
        if not m:
            continue
        kind, name, B, T, D, rest = m.groups()
        row = {"kind": kind, "impl": name, "B": int(B), "T": int(T), "H": heads, "D": int(D), "E": int(D)}
        n = NUM_RE.search(rest)
        if n:
            row.update(fwd_ms=float(n[1]), fwd_bwd_ms=float(n[2]), peak_extra_mib=float(n[3]))
        else:
            row["error"] = rest
        rows.append(row)
        if (kind, int(T), int(D)) not in shapes:
            shapes.append((kind, int(T), int(D)))
        if name not in impls:
            impls.append(name)
    write_results(out, meta, rows, shapes, impls, tag, final=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
