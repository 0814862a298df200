"""Registers, spill (stack bytes) and shared memory of the LA2 fused walk compiled for sm_90 (H100/H200), without a
GPU: Triton compiles for the target and its bundled cuobjdump reads the cubin. Use it to pick block sizes, stage
counts and register caps that let more programs share an SM before spending GPU time on them.

    python benchmarks/sm90_resources.py                      # a few walk configs at D = E = 128, bf16
    python benchmarks/sm90_resources.py --configs '[{"BT": 64, "BV": 64, "warps": 4, "stages": 1, "maxnreg": 168}]'

Integer arguments are compiled as the runtime specialises them (pointers and strides divisible by 16). The Triton
version here may differ from the GPU machine's, so treat the numbers as close, not exact.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CONFIGS = [
    {"BT": 64, "BV": 64, "warps": 4, "stages": 2},
    {"BT": 64, "BV": 64, "warps": 4, "stages": 1, "maxnreg": 168},
    {"BT": 64, "BV": 64, "warps": 4, "stages": 1, "maxnreg": 128},
    {"BT": 64, "BV": 128, "warps": 8, "stages": 3},
]
POINTERS = {"q": "*bf16", "k": "*bf16", "v": "*bf16", "o": "*bf16", "state": "*fp32", "init": "*fp32",
            "fin": "*fp32", "slope": "*fp32", "cu_seqlens": "*i32", "seg_idx": "*i32", "boff": "*i32"}


def walk_resources(BT, BV, warps, stages, maxnreg=None, D=128, E=128, reverse=False) -> dict:
    """{regs, stack, shared_kib} of la2_walk_kernel (bf16, decay, entering states, no final state)."""
    from tnl_kernels.la2_fused import la2_walk_kernel as fn

    const = dict(H=16, DK=D, DV=E, BT=BT, BD=max(32, triton.next_power_of_2(D)), BV=BV, HAS_DECAY=True,
                 USE_STATE=True, USE_INIT=False, STORE_FIN=False, REVERSE=reverse, IS_VARLEN=False, PREC="tf32")
    names = fn.arg_names
    sig = {n: "constexpr" if n in const else POINTERS.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in POINTERS or n.startswith("s_")}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    opts = dict(num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"regs": int(m[1]), "stack": int(m[2]), "shared_kib": kernel.metadata.shared / 1024}


def programs_per_sm(r: dict, warps: int) -> int:
    """Resident programs per H100 SM: 64K registers, 227 KiB of shared memory per block at most (228 per SM, 1 KiB
    reserved per block)."""
    by_regs = 65536 // (max(r["regs"], 1) * 32 * warps)
    by_smem = int(228 // (r["shared_kib"] + 1))
    return min(by_regs, by_smem, 64 // warps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", help="JSON list of walk configs (BT, BV, warps, stages, optional maxnreg)")
    p.add_argument("--dims", default="128,128", help="D,E")
    args = p.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    D, E = (int(x) for x in args.dims.split(","))
    for cfg in json.loads(args.configs) if args.configs else DEFAULT_CONFIGS:
        r = walk_resources(**cfg, D=D, E=E)
        print(json.dumps({**cfg, **r, "programs_per_sm": programs_per_sm(r, cfg["warps"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
