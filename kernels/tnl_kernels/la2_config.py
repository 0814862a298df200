"""Block sizes and launch parameters of the LA2 kernels, per shape class, with an optional tuned table.

Forward and backward are configured separately (backward recomputes the chunk states with its own chunk length).
Keys of a phase config:
  BT              chunk length = interval between stored chunk states
  BK, BV          D and E tiles of the sequential state passes (smaller tiles = more programs for long sequences)
  BKO, BVO        D tile (looped) and E tile (grid) of the forward output pass
  BVB             E tile looped over by the backward dq/dk/dv pass (which holds the whole D)
  warps_*/stages_*  num_warps / num_stages of the state pass (s), output pass (o), dq/dk/dv pass (b)
  ALGO            "chunk" (the keys above) or "fused" (kernels/tnl_kernels/la2_fused.py: LA2's own loop over segments,
                  state in registers, no per-chunk states in memory); chosen per phase, each with its own keys:
Keys of a "fused" phase config (the backward runs three walks, dq forward, dv and dk reversed, with the same keys):
  BT              chunk length of the walk (one BT x BT score tile in registers)
  BV              value tile of the walk (grid); the whole key dim is one tile. BV < value dim re-reads q and k per
                  tile but halves the fp32 state held in registers. Never below 32 (16-wide tiles miscompiled)
  SEGT            target tokens per segment (rounded down to a multiple of BT); segments of a sequence are walked
                  in parallel. 0: one segment per sequence (no segment-state passes at all)
  warps, stages   num_warps / num_stages of the walk
  DKV             (backward) true: dk and dv from one reversed walk holding the whole D x E state (reads q, k, v,
                  dO once: -2 units; more registers); only where next_pow2(D) * next_pow2(E) <= 128 * 128
  OVERLAP         (backward) true: the reverse segment states (segment sums of q, dO + scan) run on a second CUDA
                  stream beside the dq walk, which they do not depend on (ncu: the walk leaves 30-40% of DRAM
                  bandwidth unused); only where sequences have more than one segment
  BKS, BVS, BTS   key / value tiles and chunk length of the segment-sum pass (it and the segment scan, whose tiles
                  are at most 32 x 32, run only when a sequence has more than one segment); warps_seg / stages_seg
                  its launch parameters
  SEGCUT          (bits) the segment sums skip chunks whose every decay weight lam^e is below 2^-SEGCUT: a head
                  with slope s only needs the SEGCUT * ln 2 / s tokens of each segment nearest the boundary (the
                  last ones forward, the first ones in the reversed backward sums). Default 40: a dropped token
                  moves the sum by at most 2^-40 of its own k^T v, far below bf16 inputs' rounding unless it is
                  ~10^9 times larger than the kept tokens'; with the benchmarks' per-head slopes 2^(-8(h+1)/16) the
                  sums read ~31% of the chunks of 4,096-token segments. 0: every token
`la2_tuned.json` beside this file (written by benchmarks/tune_la2.py on a GPU) overrides the heuristic per GPU model
and key "<dtype>/D<D>/E<E>/<class>", class from the number of (sequence, head) pairs: few (<= 32), mid (< 128), many.
Its top level maps torch.cuda.get_device_name() to that GPU's table: the best settings differ between GPU models (the
4-warp backward walk at 2 stages beat 3 stages by 5-6% in every class on an H200, and only in one, within 1%, on an
H100). A GPU without a table of its own uses REFERENCE_GPU's, the card the heuristics were chosen on (as does any
key a GPU's table lacks).
Without a tuned entry or override, each phase runs default_algo's choice (fused for 16-bit inputs, chunked for fp32
and for the forward of key dims above 128).
A tuned or overriding phase config is merged over the heuristic of its own ALGO; a tuned phase of another ALGO than
the override's is ignored.
"""

import functools
import json
from pathlib import Path

import torch
import triton

TUNED_PATH = Path(__file__).with_name("la2_tuned.json")
REFERENCE_GPU = "NVIDIA H100 80GB HBM3"


def shape_class(nh: int) -> str:
    """few (<= 32), mid (33-127) or many (>= 128) (sequence, head) pairs. From 128 pairs on, the fused walk fills an
    H100 without cutting sequences into segments: 128 pairs x 2 value tiles = 256 programs, one wave at 2 programs
    per SM on 132 SMs (the 65,536-token shape at T = 8K: segments there cost 0.27 ms of fwd+bwd, 2.15 ms against
    1.88 at T = 4K)."""
    return "few" if nh <= 32 else ("mid" if nh < 128 else "many")


def table_key(dtype: torch.dtype, D: int, E: int, nh: int) -> str:
    return f"{str(dtype).replace('torch.', '')}/D{D}/E{E}/{shape_class(nh)}"


def check_tables(tables: dict, where: str) -> dict:
    """`tables` if it is {GPU name: {key: {phase: config}}} with an ALGO in every phase config; anything else (e.g.
    a single-GPU table {key: {phase: config}}) is one clear error, not a table silently ignored."""
    flat = [k for k, v in tables.items() if isinstance(v, dict) and ({"fwd", "bwd"} & set(v))]
    if flat:
        raise ValueError(f"{where}: entries {flat[:3]} are not under a GPU name; nest them under the name of the GPU "
                         "they were tuned on, or re-run benchmarks/tune_la2.py")
    for gpu, table in tables.items():
        for key, phases in table.items():
            for phase, cfg in phases.items():
                if cfg.get("ALGO") not in ALGOS:
                    raise ValueError(f"{where}: {gpu} / {key} / {phase} must name its ALGO ({' or '.join(ALGOS)}); "
                                     "re-run benchmarks/tune_la2.py")
    return tables


@functools.lru_cache(maxsize=1)
def _tuned() -> dict:
    """The whole table file: {GPU name: {key: {phase: config}}}."""
    try:
        tables = json.loads(TUNED_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return check_tables(tables, str(TUNED_PATH))


@functools.lru_cache(maxsize=16)
def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def tuned_table(gpu: str | None) -> dict:
    """{key: {phase: config}} for GPU model `gpu` (None: no GPU, e.g. the CPU interpreter): its own entries, and
    REFERENCE_GPU's for keys it lacks."""
    tables = _tuned()
    return {**tables.get(REFERENCE_GPU, {}), **tables.get(gpu, {})}


def table_note(gpu: str) -> str:
    """One line for run logs: which tuned block table GPU model `gpu` runs with."""
    tables = _tuned()
    if gpu in tables:
        return f"LA2 blocks: tuned table for {gpu}"
    if REFERENCE_GPU in tables:
        return (f"LA2 blocks: no tuned table for {gpu}, using the {REFERENCE_GPU} one "
                "(python benchmarks/tune_la2.py tunes this GPU)")
    return "LA2 blocks: heuristic defaults (no tuned table)"


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


def heuristic_fused(D: int, E: int, dtype: torch.dtype, nh: int) -> dict:
    """Defaults of the "fused" algorithm (first chosen from sm_90 compiles on CPU, registers and spills in
    benchmarks/NOTES.md; 16-bit 128-wide heads then tuned on an H100): the whole key dim of the state in registers,
    a 64-token chunk; segments of 4,096 tokens where few (sequence, head) pairs would leave SMs idle. 256-wide heads
    halve the chunk and the value tile. fp32 ("ieee" products without tensor cores) spills at every tile size."""
    BD = max(32, triton.next_power_of_2(D))
    BE = max(32, triton.next_power_of_2(E))
    big = max(BD, BE)
    if dtype == torch.float32:
        walk = dict(BT=16, BV=32, warps=4)
    elif big > 128:
        walk = dict(BT=32, BV=64, warps=8)
    else:
        walk = dict(BT=64, BV=128, warps=8 if big >= 128 else 4)
    fwd_walk = walk
    bwd_walk = walk
    if dtype != torch.float32 and big == 128:
        # tuned on an H100 in every shape class (results/kernels/tune_la2_*): a 64-wide value tile with 4 warps, forward
        # (0.47-0.75 vs 0.64-0.90 ms) and backward (fwd+bwd 1.87-2.36 vs 2.04-2.52 ms: two programs per SM, where
        # ncu found the 8-warp walks at one, 255 registers and spilling), 3 stages backward
        fwd_walk = bwd_walk = dict(walk, BV=64, warps=4)
    seg = 64 if dtype == torch.float32 else 128
    phase = dict(ALGO="fused", **walk, stages=2, SEGT=0 if shape_class(nh) == "many" else 4096, SEGCUT=40,
                 BKS=min(seg, BD), BVS=min(seg, BE), BTS=64, warps_seg=8 if seg == 128 and big >= 128 else 4,
                 stages_seg=2)
    # merged dk/dv walk: no spill on sm_90 for 64-wide heads; 312 B of spill at 128 x 128 (not the default there)
    bwd_stages = 3 if dtype != torch.float32 and big == 128 else 2
    return {"fwd": dict(phase, **fwd_walk),
            "bwd": dict(phase, **bwd_walk, stages=bwd_stages, DKV=big <= 64 and dtype != torch.float32)}


ALGOS = ("chunk", "fused")
# One algorithm for every phase and shape, or None for each phase's own choice. Set by tnl.ops from its la2_algo
# setting (a run's kernels.la2_algo, or the TNL_LA2_ALGO override) before every call into these kernels.
forced_algo: str | None = None
# phase keys that the heuristics leave unset
OPTIONAL_KEYS = {"chunk": set(), "fused": {"OVERLAP"}}


def default_algo(phase: str, D: int, dtype: torch.dtype) -> str:
    """The algorithm a phase runs when neither an override, `forced_algo` nor the tuned table names one.

    Measured on an H100 (benchmarks/NOTES.md, "Fused segment walk"): in bf16 the fused walk beats the chunked path
    at every T for D = E = 128 (fwd+bwd 2.5-3.1 ms vs 3.1-4.0) and D = E = 64, and its backward is 9x faster at the
    LRPE layer's D = 256, E = 128 (4.0 vs 37 ms at tnl_385m's shape), where the chunked forward stays faster (0.50 vs
    0.94 ms). fp32 keeps the chunked path: the fused walk's exact fp32 products spill registers at every tile size."""
    if dtype == torch.float32:
        return "chunk"
    if phase == "fwd" and D > 128:
        return "chunk"
    return "fused"


def get_config(D: int, E: int, dtype: torch.dtype, nh: int, override: dict | None = None,
               device: torch.device | None = None) -> dict:
    """Heuristic of each phase's ALGO, then the tuned table of `device`'s GPU model (when of the same ALGO), then
    `override`.

    The ALGO is the override's, else `forced_algo` (chunk | fused: one algorithm everywhere), else the tuned
    table's, else default_algo's."""
    gpu = _device_name(device.index if device.index is not None else torch.cuda.current_device()) \
        if device is not None and device.type == "cuda" else None
    tuned = tuned_table(gpu).get(table_key(dtype, D, E, nh), {})
    cfg = {}
    for phase in ("fwd", "bwd"):
        t, o = tuned.get(phase, {}), (override or {}).get(phase, {})
        algo = o.get("ALGO") or forced_algo or t.get("ALGO") or default_algo(phase, D, dtype)
        if algo not in ALGOS:
            raise ValueError(f"la2 config: {phase} ALGO must be one of {ALGOS}, got {algo!r}")
        base = (heuristic if algo == "chunk" else heuristic_fused)(D, E, dtype, nh)[phase]
        cfg[phase] = {**base, **(t if t.get("ALGO") == algo else {}), **o, "ALGO": algo}
        unknown = set(cfg[phase]) - set(base) - OPTIONAL_KEYS[algo] - {"ALGO"}
        if unknown:  # e.g. a key of the other algorithm, or one that no longer exists (the chunked SEG)
            raise ValueError(f"la2 config: {phase} has keys the {algo!r} algorithm does not know: {sorted(unknown)}")
    return cfg
