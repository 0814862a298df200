"""Block sizes and launch parameters of the LA2 kernels, per shape class, with an optional tuned table.

Forward and backward are configured separately (backward recomputes the chunk states with its own chunk length).
Keys of a phase config:
  BT              chunk length = interval between stored chunk states
  BK, BV          D and E tiles of the sequential state passes (smaller tiles = more programs for long sequences)
  BKO, BVO        D tile (looped) and E tile (grid) of the forward output pass
  BVB             E tile looped over by the backward dq/dk/dv pass (which holds the whole D)
  SEG             0: each state pass walks a whole sequence in one program; n > 0: it walks segments of n chunks
                  in parallel and a scan joins them (more programs for long sequences; not yet measured on a GPU)
  warps_*/stages_*  num_warps / num_stages of the state pass (s), output pass (o), dq/dk/dv pass (b)
`la2_tuned.json` beside this file (written by benchmarks/tune_la2.py on a GPU) overrides the heuristic per key
"<dtype>/D<D>/E<E>/<class>", class from the number of (sequence, head) pairs: few (<= 32), mid (<= 128), many.
"""

import functools
import json
from pathlib import Path

import torch
import triton

TUNED_PATH = Path(__file__).with_name("la2_tuned.json")


def shape_class(nh: int) -> str:
    return "few" if nh <= 32 else ("mid" if nh <= 128 else "many")


def table_key(dtype: torch.dtype, D: int, E: int, nh: int) -> str:
    return f"{str(dtype).replace('torch.', '')}/D{D}/E{E}/{shape_class(nh)}"


@functools.lru_cache(maxsize=1)
def _tuned() -> dict:
    try:
        return json.loads(TUNED_PATH.read_text())
    except (OSError, ValueError):
        return {}


def heuristic(D: int, E: int, dtype: torch.dtype, nh: int) -> dict:
    """Safe defaults: fit the shared memory of an H100 for every D, E <= 256 and dtype."""
    BD = max(16, triton.next_power_of_2(D))
    # E tiles of 16 gave wrong outputs and illegal memory accesses for D = 32 in bf16 on an H200 with Triton 3.6
    # (tnl_tiny's LRPE layer); 32-wide E tiles (masked) were right on every probed shape: benchmarks/NOTES.md.
    BE = max(32, triton.next_power_of_2(E))
    wide = BD > 128 or dtype == torch.float32
    BK, BV = min(64, BD), min(64, BE)
    # Measured on an H100 (benchmarks/NOTES.md): 64x64 state tiles beat 32x32 even for 16 (sequence, head) pairs,
    # and for 16-bit D = 128 a 128-token forward chunk with the whole E per output program is fastest in every class.
    big_fwd = BD == 128 and dtype != torch.float32
    fwd = dict(BT=128 if big_fwd else 64, BK=BK, BV=BV, BKO=min(64, BD), BVO=min(128 if big_fwd else 64, BE),
               warps_s=4, stages_s=3, warps_o=8 if big_fwd else 4, stages_o=2)
    bwd = dict(BT=32 if BD > 128 else 64, BK=BK, BV=BV, BVB=min(32 if wide else 64, BE), warps_s=4, stages_s=3,
               warps_b=8 if BD >= 128 else 4, stages_b=1 if wide else 2)
    return {"fwd": fwd, "bwd": bwd}


def get_config(D: int, E: int, dtype: torch.dtype, nh: int, override: dict | None = None) -> dict:
    cfg = heuristic(D, E, dtype, nh)
    tuned = _tuned().get(table_key(dtype, D, E, nh), {})
    for src in (tuned, override or {}):
        for phase in ("fwd", "bwd"):
            cfg[phase].update(src.get(phase, {}))
    return cfg
