"""Forward and forward+backward time of the LA2 kernels at the shapes a model actually calls them with, per
algorithm (chunk / fused): e.g. tnl_385m at 2K context is B=16, T=2048, H=8 with D=E=128, and its LRPE layer has
D=256 (q, k doubled by [cos, sin]) with E=128. v is read as a strided view, as the model passes it.

    python benchmarks/bench_la2_shapes.py --shapes 16x2048x8x128x128,16x2048x8x256x128

Shapes are BxTxHxDxE; bf16 inputs, per-head decay. Medians of triton.testing.do_bench in ms. --algos also takes
"default" (the tuned table as it stands) and A/B variants NAME=JSON, a config override merged over the tuned table:

    python benchmarks/bench_la2_shapes.py --shapes 2x32768x16x128x128 \
        --algos 'default;overlap={"bwd": {"OVERLAP": true}};plain={"bwd": {"OVERLAP": false}}'

(a list holding a JSON variant is separated by ';').
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import results_io  # noqa: E402  (beside this script)


def plain_inputs(B, T, H, D, E, device="cuda", dtype=torch.bfloat16):
    """benchmarks/bench_kernels.py's inputs: contiguous q, k, v of N(0, 1/4) values, slopes 2^(-8(h+1)/H)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = ((torch.randn(B, T, H, d, device=device, generator=g) * 0.5).to(dtype).requires_grad_()
               for d in (D, D, E))
    slope = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], device=device)
    return q, k, v, slope


def inputs(B, T, H, D, E, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, T, H, D, device=device, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, T, H, D, device=device, dtype=dtype, generator=g).requires_grad_()
    # v as a view of a wider projection, like the model's fused qkvu output (row stride 4 * H * E)
    v_full = torch.randn(B, T, 4 * H * E, device=device, dtype=dtype, generator=g)
    v = v_full[..., : H * E].view(B, T, H, E).requires_grad_()
    slope = torch.linspace(0.01, 0.5, H, device=device)
    return q, k, v, slope


def variant(spec: str) -> tuple[str, dict | None]:
    """(name, config override) of one --algos item: chunk, fused, default or NAME=JSON."""
    if spec == "default":
        return spec, None
    if spec in ("chunk", "fused"):
        return spec, {"fwd": {"ALGO": spec}, "bwd": {"ALGO": spec}}
    name, sep, text = spec.partition("=")
    try:
        cfg = json.loads(text) if sep else None
    except ValueError as err:
        raise ValueError(f"--algos: {spec!r} is not NAME=JSON ({err})") from None
    if not name.strip() or not isinstance(cfg, dict):
        raise ValueError(f"--algos: {spec!r} is none of chunk, fused, default, NAME=JSON (a config object)")
    unknown = set(cfg) - {"fwd", "bwd", "DMAX", "EMAX"}
    if unknown:  # e.g. {"OVERLAP": true} without "bwd": the kernels would ignore it and time the default twice
        raise ValueError(f"--algos: {spec!r} has keys {sorted(unknown)}; a config has fwd, bwd, DMAX, EMAX")
    return name.strip(), cfg


def time_shape(shape, algo: str, cfg: dict | None = None, plain: bool = False) -> dict:
    from tnl.ops.triton_backend import triton_fn  # the kernel settings in force reach the kernels

    lightning_attn_triton = triton_fn("lightning_attn_triton", torch.device("cuda"))

    B, T, H, D, E = shape
    if plain:
        q, k, v, slope = plain_inputs(B, T, H, D, E)
    else:
        q, k, v, slope = inputs(B, T, H, D, E)
        # inputs are scaled small so that fp32 state sums stay tame at long T
        with torch.no_grad():
            for t in (q, k):
                t.mul_(D ** -0.5)
    do = torch.randn(B, T, H, E, device="cuda", dtype=q.dtype)

    def fwd():
        return lightning_attn_triton(q, k, v, slope, config=cfg)[0]

    def fwd_bwd():
        o = fwd()
        torch.autograd.backward(o, do)

    row = {"B": B, "T": T, "H": H, "D": D, "E": E, "algo": algo, "inputs": "plain" if plain else "model"}
    try:
        with torch.no_grad():
            row["fwd_ms"] = do_bench(fwd, warmup=25, rep=100, return_mode="median")
        row["fwd_bwd_ms"] = do_bench(fwd_bwd, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
    except Exception as err:  # a config that does not compile on this GPU is reported, not fatal
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="16x2048x8x128x128,16x2048x8x256x128,1x65536x8x128x128,1x65536x8x256x128")
    p.add_argument("--algos", default="chunk,fused", help="chunk, fused, default, NAME=JSON (see above)")
    p.add_argument("--inputs", default="model", choices=["model", "plain", "both"],
                   help="model: v a strided view, small q, k (the model's calls); plain: bench_kernels' inputs")
    p.add_argument("--out", default=str(results_io.topic_dir("kernels")),
                   help="output folder (default benchmarks/results/kernels)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    args = p.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    if any(len(s) != 5 for s in shapes):
        p.error("--shapes: BxTxHxDxE, comma separated")
    try:
        # a JSON variant holds commas: such lists are separated by ';'
        sep = ";" if (";" in args.algos or "=" in args.algos) else ","
        variants = [variant(a.strip()) for a in args.algos.split(sep) if a.strip()]
    except ValueError as err:
        p.error(str(err))
    if not torch.cuda.is_available():
        print("error: bench_la2_shapes needs a CUDA GPU", file=sys.stderr)
        return 1
    meta = results_io.run_facts("benchmarks/bench_la2_shapes.py", argv)
    rows = []
    kinds = {"model": [False], "plain": [True], "both": [False, True]}[args.inputs]
    for shape in shapes:
        for plain in kinds:
            for algo, cfg in variants:
                row = time_shape(shape, algo, cfg, plain)
                rows.append(row)
                print(json.dumps(row), flush=True)
    name = meta["gpu"]
    lines = [f"# LA2 at model shapes ({name})", "", f"torch {meta['torch']}, triton {meta['triton']}; bf16, decay, "
             "inputs 'model': v strided, q and k scaled by D^-1/2, slopes 0.01-0.5; 'plain': "
             "benchmarks/bench_kernels.py's; medians in ms.", "",
             "| B x T x H x D x E | inputs | algo | fwd | fwd+bwd |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['B']}x{r['T']}x{r['H']}x{r['D']}x{r['E']}", r["inputs"], r["algo"]]
        cells += [f"{r['fwd_ms']:.3f}", f"{r['fwd_bwd_ms']:.3f}"] if "error" not in r else [r["error"], ""]
        lines.append("| " + " | ".join(cells) + " |")
    results_io.write(args.out, "la2_shapes", meta, {"rows": rows}, lines, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
