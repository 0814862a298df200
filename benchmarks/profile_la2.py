"""Where the time of one LA2 forward+backward goes, kernel by kernel (torch.profiler), at the shape of record or
any other; also the workload that `ncu` profiles (`--iters 1 --no-breakdown`, see gpu_suite.sh's `ncu` step).

    python benchmarks/profile_la2.py --shapes 16x4096x16x128x128,1x65536x16x128x128

Shapes are BxTxHxDxE, bf16, per-head decay, contiguous q, k, v (the kernel benchmark's layout). For each shape the
table lists every kernel's calls and its median time per call over --iters profiled iterations, with the bytes it
must move at least (its tensor reads and writes, from the shape) and the bandwidth that implies.
"""

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
import triton

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import results_io  # noqa: E402  (beside this script)

# tensor passes (one read or write of a (B, T, H, D)-sized bf16 tensor) each fused-path kernel makes at D = E;
# the segment sums read two tensors (k, v forward; q, dO reverse) and write states that are small next to them
PASSES = {"la2_walk_kernel": 4, "la2_walk_dkv_kernel": 6, "la2_segsum_kernel": 2}


def run_once(q, k, v, slope, do):
    from tnl.ops.triton_backend import triton_fn  # the kernel settings in force reach the kernels

    lightning_attn_triton = triton_fn("lightning_attn_triton", torch.device("cuda"))

    o = lightning_attn_triton(q, k, v, slope)[0]
    torch.autograd.backward(o, do)
    q.grad = k.grad = v.grad = None


def make_inputs(B, T, H, D, E):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.randn(B, T, H, D, device="cuda", generator=g) * D ** -0.5).bfloat16().requires_grad_()
    k = (torch.randn(B, T, H, D, device="cuda", generator=g) * D ** -0.5).bfloat16().requires_grad_()
    v = torch.randn(B, T, H, E, device="cuda", generator=g).bfloat16().requires_grad_()
    slope = torch.linspace(0.01, 0.5, H, device="cuda")
    do = torch.randn(B, T, H, E, device="cuda", generator=g).bfloat16()
    return q, k, v, slope, do


def breakdown(shape, iters: int) -> dict:
    B, T, H, D, E = shape
    args = make_inputs(*shape)
    for _ in range(3):
        run_once(*args)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run_once(*args)
        torch.cuda.synchronize()
    times = defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            times[ev.name].append(ev.time_range.elapsed_us())
    unit_bytes = B * T * H * D * 2
    rows = []
    for name, ts in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        row = {"kernel": name, "calls_per_iter": len(ts) / iters, "median_us": statistics.median(ts),
               "total_us_per_iter": sum(ts) / iters}
        passes = PASSES.get(name.split("(")[0])
        if passes:
            row["min_GB"] = passes * unit_bytes / 1e9
            row["GB_per_s"] = row["min_GB"] / (row["median_us"] * 1e-6)
        rows.append(row)
    return {"B": B, "T": T, "H": H, "D": D, "E": E,
            "total_us": sum(r["total_us_per_iter"] for r in rows), "kernels": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="16x4096x16x128x128,4x16384x16x128x128,1x65536x16x128x128")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-breakdown", action="store_true", help="only run --iters iterations (for ncu)")
    p.add_argument("--out", default=str(results_io.topic_dir("kernels")),
                   help="output folder (default benchmarks/results/kernels)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    args = p.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    if any(len(s) != 5 for s in shapes):
        p.error("--shapes: BxTxHxDxE, comma separated")
    if not torch.cuda.is_available():
        print("error: profile_la2 needs a CUDA GPU", file=sys.stderr)
        return 1
    if args.no_breakdown:
        for shape in shapes:
            a = make_inputs(*shape)
            for _ in range(args.iters):
                run_once(*a)
        torch.cuda.synchronize()
        return 0
    meta = results_io.run_facts("benchmarks/profile_la2.py", argv)
    name = meta["gpu"]
    results = [breakdown(s, args.iters) for s in shapes]
    lines = [f"# LA2 fwd+bwd, kernel by kernel ({name})", "",
             f"torch {torch.__version__}, triton {triton.__version__}; bf16, decay; medians over {args.iters} "
             "profiled iterations; min GB = the tensor passes the kernel must make.", ""]
    for r in results:
        lines += [f"## B={r['B']} T={r['T']} H={r['H']} D={r['D']} E={r['E']}: {r['total_us'] / 1e3:.3f} ms "
                  "of kernels per iteration", "", "| kernel | calls | median us | us/iter | min GB | GB/s |",
                  "|---|---|---|---|---|---|"]
        for k in r["kernels"]:
            gb = f"{k['min_GB']:.3f} | {k['GB_per_s']:.0f}" if "min_GB" in k else " | "
            lines.append(f"| {k['kernel'][:60]} | {k['calls_per_iter']:g} | {k['median_us']:.1f} | "
                         f"{k['total_us_per_iter']:.1f} | {gb} |")
        lines.append("")
    results_io.write(args.out, "la2_profile", meta, {"shapes": results}, lines, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
