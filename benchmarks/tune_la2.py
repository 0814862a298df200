"""Tune the LA2 block sizes on this GPU and write its entry of
kernels/tnl_kernels/la2_tuned.json (read by tnl_kernels.la2_config).

For each shape class (few / mid / many (sequence, head) pairs at a fixed token count), time candidate forward
configs (forward alone), keep the best, then candidate backward configs (forward + backward), keep the best.
Candidates of both algorithms ("chunk" and "fused", key ALGO) compete; the winner's ALGO goes into the table. The
winner is checked against the heuristic config's output (same function, bf16 rounding only). Every timing goes to
a log written through results_io (benchmarks/results/kernels/tune_la2_<gpu>_<time>.json and .md). Run on the GPU
the numbers are for:

    python benchmarks/tune_la2.py --out kernels/tnl_kernels/la2_tuned.json
"""

import argparse
import json
import sys
from pathlib import Path

import results_io  # beside this program
import torch

C = {"ALGO": "chunk"}  # chunked-algorithm candidates name it: 16-bit inputs default to the fused walk
FWD = [
    C,
    {**C, "BVO": 128, "warps_o": 8},
    {**C, "BT": 128, "BVO": 64, "warps_o": 8},
    {**C, "BT": 128, "BVO": 128, "warps_o": 8},
    {**C, "BT": 128, "BKO": 128, "BVO": 128, "warps_o": 8},
    {**C, "BT": 128, "BVO": 128, "warps_o": 8, "BK": 64, "BV": 64},
    {**C, "BT": 128, "BVO": 128, "warps_o": 8, "BK": 32, "BV": 32},
    {**C, "BVO": 128, "warps_o": 8, "stages_o": 3},
]
BWD = [
    C,
    {**C, "BVB": 32},
    {**C, "stages_b": 1},
    {**C, "BVB": 32, "warps_b": 4},
    {**C, "BT": 32, "BVB": 64, "warps_b": 4},
    {**C, "BT": 32, "BVB": 128, "stages_b": 1},
    {**C, "BK": 64, "BV": 64},
    {**C, "BK": 32, "BV": 32},
]
# "fused" algorithm (tnl_kernels/la2_fused.py): keys merge over la2_config.heuristic_fused (BT 64, BV 128, 8 warps,
# SEGT 4096 for few/mid pairs, 0 for many; DKV for heads <= 64). Short lists: each candidate costs GPU seconds.
F = {"ALGO": "fused"}
FWD += [
    F,
    {**F, "BV": 64},
    {**F, "BT": 32},
    {**F, "SEGT": 2048},
    {**F, "SEGT": 8192},
    {**F, "SEGT": 0},
    {**F, "stages": 3},
    {**F, "BV": 64, "warps": 4},
    {**F, "BV": 64, "warps": 4, "stages": 3},
    {**F, "BT": 32, "stages": 3},
    # segment-sum pass (runs for few / mid pairs only): longer chunks, deeper pipeline, or half-width key tiles
    # at 4 warps (2 programs per SM instead of 1; ncu: 1 per SM at 134 registers x 256 threads, 68% of DRAM peak)
    {**F, "BV": 64, "warps": 4, "BTS": 128},
    {**F, "BV": 64, "warps": 4, "stages_seg": 3},
    {**F, "BV": 64, "warps": 4, "BKS": 64, "warps_seg": 4},
    # no register caps (maxnreg): they lost 2-4x on an H100 and an H200, the state spilling to local memory
    # every token in the segment sums (the default skips chunks whose decay weights are all below 2^-40)
    {**F, "BV": 64, "warps": 4, "SEGCUT": 0},
]
BWD += [
    F,
    {**F, "BV": 64},
    {**F, "BT": 32},
    {**F, "SEGT": 2048},
    {**F, "SEGT": 8192},
    {**F, "stages": 3},
    {**F, "DKV": True},
    {**F, "DKV": True, "BT": 32},
    {**F, "BT": 32, "stages": 3},
    {**F, "BV": 64, "DKV": True},
    # 4 warps at BV = 64 (2 programs per SM, as the tuned forward: ncu put the 8-warp walks at 1 program per SM,
    # 255 registers with spills at 3 stages, 59-64% of DRAM peak), and 2 stages (no spill)
    {**F, "BV": 64, "warps": 4},
    {**F, "BV": 64, "warps": 4, "stages": 3},
    {**F, "stages": 2},
    {**F, "BV": 64, "warps": 4, "BKS": 64, "warps_seg": 4},
    # reverse segment states on a second stream beside the dq walk (few / mid pairs: sequences of several segments)
    {**F, "BV": 64, "warps": 4, "OVERLAP": True},
    {**F, "BV": 64, "warps": 4, "BKS": 64, "warps_seg": 4, "OVERLAP": True},
    {**F, "BV": 64, "warps": 4, "stages": 2, "OVERLAP": True},
    {**F, "BV": 64, "warps": 4, "BKS": 64, "warps_seg": 4, "OVERLAP": True, "SEGCUT": 0},
]


def tune_shape(D, T, tokens, H, log):
    """Best {"fwd", "bwd"} config for one shape, or None if the winner disagrees with the heuristic config."""
    from triton.testing import do_bench

    import tnl_kernels
    from tnl_kernels.la2_config import heuristic, heuristic_fused, table_key

    dtype = torch.bfloat16
    slope = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)], device="cuda")
    B = max(1, tokens // T)
    q, k, v = (torch.randn(B, T, H, D, device="cuda").mul_(0.5).to(dtype).requires_grad_() for _ in range(3))
    do = torch.randn_like(v)
    key = table_key(dtype, D, D, B * H)

    def run(cfg, backward):
        o = tnl_kernels.lightning_attn_triton(q, k, v, slope, None, False, None, config=cfg)[0]
        return torch.autograd.grad(o, (q, k, v), do) if backward else o

    def timed(cfg, backward):
        def f():
            if backward:
                run(cfg, True)
            else:
                with torch.no_grad():
                    run(cfg, False)

        try:
            ms = do_bench(f, warmup=10, rep=40, return_mode="median")
        except Exception as e:  # a candidate that does not compile or fit is skipped
            print(f"  {key} {cfg}: {type(e).__name__}", flush=True)
            return float("inf")
        log.append({"key": key, "T": T, "B": B, "cfg": cfg, "backward": backward, "ms": ms})
        print(f"  {key} T={T} {'fwd+bwd' if backward else 'fwd'} {ms:.3f} ms {cfg}", flush=True)
        return ms

    fwd = min(FWD, key=lambda c: timed({"fwd": c}, False))
    bwd = min(BWD, key=lambda c: timed({"fwd": fwd, "bwd": c}, True))
    best = {"fwd": fwd, "bwd": bwd}
    ref = run(None, True)
    got = run(best, True)
    errs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, ref)]
    if not max(errs) < 2e-2:
        print(f"  {key}: best config disagrees with the heuristic ({errs}); not kept", flush=True)
        return key, None
    def base(ph):
        return (heuristic_fused if best[ph].get("ALGO") == "fused" else heuristic)(D, D, dtype, B * H)[ph]

    return key, {ph: {**base(ph), **best[ph]} for ph in ("fwd", "bwd")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dims", default="128", help="head dims (D = E) to tune")
    p.add_argument("--seq-lens", default="65536,16384,4096", help="one T per shape class (few, mid, many)")
    p.add_argument("--out", default=str(results_io.REPO / "kernels" / "tnl_kernels" / "la2_tuned.json"),
                   help="the tuned table to update (default: the one tnl_kernels reads)")
    p.add_argument("--log-dir", default=str(results_io.topic_dir("kernels")),
                   help="folder of the timing log (default benchmarks/results/kernels)")
    p.add_argument("--tag", default="", help="appended to the log's name")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_la2: needs a CUDA GPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    import tnl_kernels.la2_config as la2c

    tables = la2c.check_tables(json.loads(out.read_text()), str(out)) if out.exists() else {}
    facts = results_io.run_facts("benchmarks/tune_la2.py", argv)
    gpu = facts["gpu"]
    table = tables.setdefault(gpu, {})
    la2c.tuned_table = lambda gpu: {}  # candidates merge over the heuristics only, not over the table being rewritten
    log, kept = [], []
    for D in map(int, args.dims.split(",")):
        for T in map(int, args.seq_lens.split(",")):
            key, best = tune_shape(D, T, args.tokens, args.heads, log)
            kept.append({"key": key, "T": T, "best": best})
            if best is not None:
                table[key] = best
                print(f"{key}: {best}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(tables, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    stem = results_io.write(args.log_dir, "tune_la2", facts, {"table": str(out), "kept": kept, "runs": log},
                            log_markdown(facts, out, kept, log), args.tag, echo=False)
    print(f"wrote {out} and {stem}.json/.md")
    return 0


def log_markdown(facts: dict, out: Path, kept: list[dict], log: list[dict]) -> list[str]:
    """The tuning run in brief: per shape, the best forward and forward+backward time and the config kept."""
    lines = [f"# LA2 block-size tuning ({facts['gpu']})", "",
             f"torch {facts['torch']}, triton {facts['triton']}; {len(log)} timings; table written to `{out}`. "
             f"Command: `{facts['command']}`", "",
             "| shape | best fwd ms | best fwd+bwd ms | kept |", "|---|---|---|---|"]
    for k in kept:
        best, shape = k["best"], f"{k['key']} T={k['T']}"
        times = [r for r in log if r["key"] == k["key"] and r["T"] == k["T"]]
        fwd = min((r["ms"] for r in times if not r["backward"]), default=None)
        bwd = min((r["ms"] for r in times if r["backward"]), default=None)
        cells = [shape, "-" if fwd is None else f"{fwd:.3f}", "-" if bwd is None else f"{bwd:.3f}",
                 "no (disagreed with the heuristic)" if best is None else f"`{json.dumps(best, sort_keys=True)}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
