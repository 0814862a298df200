"""The "fused" LA2 algorithm (kernels/tnl_kernels/la2_fused.py: segment walks) on CPU through Triton's interpreter.

Each case forces the path with config={"fwd": {"ALGO": "fused", ...}, "bwd": {...}} and compares the output, the
final state and every gradient (q, k, v, initial state) with the float64 step recurrence of tnl.reference, on fresh
seeded random inputs. Chunks (BT) and segments (SEGT) are tiny so that every case crosses several chunks and, where
named, several segments; NaN-poisoned buffers catch unwritten elements. bf16 is GPU-only (the interpreter's bf16
tl.dot is wrong): tests/test_kernels_gpu.py.
"""

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("interpreter tests run on CPU-only machines", allow_module_level=True)

import tnl_kernels  # noqa: E402
from numerics import rel_err  # noqa: E402
from tnl.reference import lightning_attn_recurrent  # noqa: E402
from tnl_kernels.la2_config import get_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("poison_empty")

TOL = {torch.float32: 1e-5, torch.float16: 3e-3}  # fp32: "ieee" products; fp16 rounds every product's operands


def fused(**kw):
    return {"ALGO": "fused", "BT": 16, "SEGT": 32, **kw}


def run(B, T, H, D, E, dtype, decay, with_h0, cu, config, seed, with_final=True, strided=False, slopes=None,
        check=True):
    """Kernel vs float64 recurrence for forward and all gradients; returns the relative errors (check: assert each
    is within TOL). slopes: (low, high) of the per-head decay rates, default (0.01, 0.41), or a list of them."""
    g = torch.Generator().manual_seed(seed)
    if strided:  # q, k, v as views of one fused projection, q from a (B, H, T, D) tensor: read in place
        fused_qkv = torch.randn(B, T, H, 2 * D + E, generator=g).to(dtype)
        q = torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)
        k, v = fused_qkv[..., D:2 * D], fused_qkv[..., 2 * D:]
        assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    else:
        q, k = (torch.randn(B, T, H, D, generator=g).to(dtype) for _ in range(2))
        v = torch.randn(B, T, H, E, generator=g).to(dtype)
    if isinstance(slopes, list):  # the rates themselves
        slope = torch.tensor(slopes, dtype=torch.float32) if decay else None
    else:
        lo, hi = slopes or (0.01, 0.41)
        slope = (torch.rand(H, generator=g) * (hi - lo) + lo) if decay else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    N = B if cu is None else len(cu) - 1
    h0 = torch.randn(N, H, D, E, generator=g) if with_h0 else None

    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    h0l = None if h0 is None else h0.clone().requires_grad_()
    o, ht = tnl_kernels.lightning_attn_triton(*leaves, slope, h0l, with_final, cu_t, config=config)
    assert o.dtype == dtype and o.shape == v.shape
    do = torch.randn(o.shape, generator=g).to(dtype)
    outs, grads = [o], [do]
    if with_final:
        assert ht.dtype == torch.float32 and ht.shape == (N, H, D, E)
        outs.append(ht)
        grads.append(torch.randn(ht.shape, generator=g))
    else:
        assert ht is None
    torch.autograd.backward(outs, grads)

    r = [x.detach().double().requires_grad_() for x in (q, k, v)]
    rh0 = None if h0 is None else h0.double().requires_grad_()
    ro, rht = lightning_attn_recurrent(*r, slope, rh0, cu_t)
    torch.autograd.backward([ro, rht][: len(outs)], [x.double() for x in grads])
    errs = {"o": rel_err(o, ro), "dq": rel_err(leaves[0].grad, r[0].grad),
            "dk": rel_err(leaves[1].grad, r[1].grad), "dv": rel_err(leaves[2].grad, r[2].grad)}
    if with_final:
        errs["final_state"] = rel_err(ht, rht)
    if h0 is not None:
        errs["d_initial_state"] = rel_err(h0l.grad, rh0.grad)
    tol = TOL[dtype]
    bad = {n: e for n, e in errs.items() if not e <= tol}  # `not <=` also catches NaN
    assert not bad or not check, f"relative errors above {tol}: {bad} (all: {errs})"
    return errs


F = fused()
CASES = {
    # name: (B, T, H, D, E, dtype, decay, initial_state, cu_seqlens, fwd config, bwd config)
    "T1_h0": (2, 1, 2, 16, 16, torch.float32, True, True, None, F, F),
    "T70_3seg_h0": (2, 70, 2, 16, 32, torch.float32, True, True, None, F, F),
    "T70_E48_nodecay_fp16": (2, 70, 2, 32, 48, torch.float16, False, False, None, F, F),
    "T45_one_segment_D32_fp16": (1, 45, 2, 32, 32, torch.float16, True, True, None, fused(SEGT=0), fused(SEGT=0)),
    "E48_value_tiles": (1, 50, 1, 16, 48, torch.float32, True, True, None, fused(BV=32), fused(BV=32, SEGT=16)),
    "D48_E80_masked": (1, 40, 1, 48, 80, torch.float32, True, True, None, F, F),
    "packed_1tok_docs_h0": (1, 83, 2, 16, 32, torch.float32, True, True, [0, 1, 40, 41, 42, 83], fused(SEGT=16, BTS=16),
                            fused(SEGT=16)),
    "packed_empty_doc_nodecay_fp16": (1, 100, 2, 32, 16, torch.float16, False, True, [0, 65, 65, 66, 100], F, F),
    "packed_all_1tok": (1, 3, 1, 16, 16, torch.float32, True, True, [0, 1, 2, 3], F, F),
    # the backward cuts other segments than the forward: its segment states are recomputed, not reused
    "bwd_other_segments": (1, 90, 2, 16, 16, torch.float32, True, True, [0, 7, 90], F, fused(BT=32, SEGT=64)),
    # dk and dv from one reversed walk (DKV)
    "dkv_3seg_h0": (2, 70, 2, 16, 32, torch.float32, True, True, None, F, fused(DKV=True)),
    "dkv_packed_nodecay_fp16": (1, 83, 2, 32, 48, torch.float16, False, True, [0, 1, 40, 41, 42, 83], F,
                                fused(DKV=True, SEGT=16)),
    # one phase fused, the other the chunked algorithm
    "fwd_fused_bwd_chunk": (2, 40, 2, 16, 32, torch.float32, True, True, None, F, {"BT": 16}),
    "fwd_chunk_bwd_fused": (1, 60, 2, 16, 32, torch.float16, True, True, [0, 20, 60], {"BT": 16}, F),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_recurrence(name):
    B, T, H, D, E, dtype, decay, with_h0, cu, cf, cb = CASES[name]
    run(B, T, H, D, E, dtype, decay, with_h0, cu, {"fwd": cf, "bwd": cb}, sum(map(ord, name)))


@pytest.mark.parametrize("cu", [None, [0, 9, 150, 200]])
def test_segment_sums_skip_decayed_chunks(cu):
    """With strong decay (slopes 0.5-3: 2^-40 is reached within 10-56 tokens) the segment sums read only the chunks
    whose weights matter, forward (the last chunks of a segment) and reversed (the first ones): still exact to fp32.
    A deliberately coarse cut (weights below 1/2 dropped, at slopes 0.05-0.1) must then break the forward output,
    or only the gradients when set on the backward alone: proof that the skipping path runs and that this test can
    fail."""
    B = 2 if cu is None else 1
    shape = (B, 200, 3, 16, 16, torch.float32, True, True, cu)
    cfg = fused(SEGT=80, BTS=16)  # 16-token chunks in the segment sums too: fine-grained skipping
    run(*shape, {"fwd": cfg, "bwd": cfg}, 3, slopes=(0.5, 3.0))
    coarse = fused(SEGT=80, BTS=16, SEGCUT=1)
    errs = run(*shape, {"fwd": coarse, "bwd": cfg}, 3, slopes=(0.05, 0.1), check=False)
    assert errs["o"] > 1e-3 and errs["final_state"] > 1e-3, errs
    errs = run(*shape, {"fwd": cfg, "bwd": coarse}, 3, slopes=(0.05, 0.1), check=False)
    assert errs["o"] < 1e-5 and max(errs["dk"], errs["dv"]) > 1e-4, errs


@pytest.mark.parametrize("segcut", [40, 0])
def test_segment_sums_with_a_head_without_decay(segcut):
    """A zero rate (no decay: every token counts) next to a strong one, with the skip on and off (SEGCUT = 0)."""
    cfg = fused(SEGT=80, BTS=16, SEGCUT=segcut)
    run(2, 200, 3, 16, 16, torch.float32, True, True, None, {"fwd": cfg, "bwd": cfg}, 4, slopes=[0.0, 2.0, 0.02])


def test_fused_strided_inputs_no_final_state():
    run(2, 37, 2, 16, 32, torch.float32, True, False, None, {"fwd": F, "bwd": F}, 5, with_final=False,
        strided=True)


def test_fused_summed_output_stride0_grad():
    """o.sum() backward hands the kernel a grad_output with zero strides."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 50, 2, 16, generator=g).requires_grad_() for _ in range(3))
    slope = torch.tensor([0.1, 0.3])
    o, _ = tnl_kernels.lightning_attn_triton(q, k, v, slope, None, False, None, config={"fwd": F, "bwd": F})
    o.sum().backward()
    r = [x.detach().double().requires_grad_() for x in (q, k, v)]
    lightning_attn_recurrent(*r, slope)[0].sum().backward()
    for a, b in zip((q, k, v), r):
        assert rel_err(a.grad, b.grad) < TOL[torch.float32]


def test_fused_config_merging(monkeypatch):
    """A fused override starts from the fused heuristic, not from a tuned chunk entry; bad ALGO is an error."""
    import tnl_kernels.la2_config as la2c

    chunk_entry = {"fwd": {"ALGO": "chunk", "BT": 128, "BV": 64, "warps_s": 4}, "bwd": {"ALGO": "chunk", "BT": 64}}
    table = {la2c.table_key(torch.bfloat16, 128, 128, 16): chunk_entry}
    monkeypatch.setattr(la2c, "_tuned", lambda: {la2c.REFERENCE_GPU: table})
    cfg = get_config(128, 128, torch.bfloat16, 16, {"fwd": {"ALGO": "fused", "SEGT": 2048}})
    fused_fwd = la2c.heuristic_fused(128, 128, torch.bfloat16, 16)["fwd"]
    assert cfg["fwd"]["ALGO"] == "fused" and cfg["fwd"]["BT"] == fused_fwd["BT"] and cfg["fwd"]["BV"] == fused_fwd["BV"]
    assert cfg["fwd"]["SEGT"] == 2048 and "warps_s" not in cfg["fwd"]
    assert cfg["bwd"] == {**la2c.heuristic(128, 128, torch.bfloat16, 16)["bwd"], "BT": 64, "ALGO": "chunk"}
    with pytest.raises(ValueError, match="ALGO"):
        get_config(64, 64, torch.float16, 4, {"bwd": {"ALGO": "fast"}})


def test_tuned_table_entries_must_name_their_algorithm():
    """A tuned entry without ALGO is one clear error naming it (no guessed algorithm), as is a table not nested
    under a GPU name."""
    import tnl_kernels.la2_config as la2c

    good = {"fwd": {"ALGO": "fused", "BT": 64}, "bwd": {"ALGO": "chunk", "BT": 64}}
    assert la2c.check_tables({"GPU X": {"bfloat16/D64/E64/few": good}}, "t.json")
    with pytest.raises(ValueError, match="GPU X / bfloat16/D64/E64/few / bwd must name its ALGO"):
        la2c.check_tables({"GPU X": {"bfloat16/D64/E64/few": {**good, "bwd": {"BT": 64}}}}, "t.json")
    with pytest.raises(ValueError, match="not under a GPU name"):
        la2c.check_tables({"bfloat16/D64/E64/few": good}, "t.json")


def test_fused_segments_keep_int32_token_offsets():
    """Token offsets inside a segment are int32 in the kernels: a huge token stride caps the segment length."""
    from tnl_kernels.lightning_attn import _Plan

    q = torch.zeros(1, 300, 2, 16)
    plan = _Plan(q, q, None, {"fwd": F, "bwd": F}, q)
    assert plan.fused_segments({"BT": 16, "SEGT": 0}).NSEG == 1
    assert plan.fused_segments({"BT": 16, "SEGT": 40}).SEGTOK == 32
    plan.tok_stride = 2**24  # as if a row of T held 16M elements
    segs = plan.fused_segments({"BT": 16, "SEGT": 0})
    assert segs.SEGTOK == 112 and segs.NSEG == 3 and segs.n_bnd == 2


def test_default_algorithm_and_forced_algorithm(monkeypatch):
    """Without a tuned entry: fused for 16-bit inputs, chunked for fp32 and for the forward of key dims > 128;
    forced_algo (tnl.ops' la2_algo setting) forces one algorithm; an explicit override wins over both."""
    import tnl_kernels.la2_config as la2c

    monkeypatch.setattr(la2c, "_tuned", lambda: {})
    monkeypatch.setattr(la2c, "forced_algo", None)
    algos = lambda *a, **kw: tuple(get_config(*a, **kw)[p]["ALGO"] for p in ("fwd", "bwd"))  # noqa: E731
    assert algos(128, 128, torch.bfloat16, 16) == ("fused", "fused")
    assert algos(64, 64, torch.float16, 512) == ("fused", "fused")
    assert algos(256, 128, torch.bfloat16, 128) == ("chunk", "fused")
    assert algos(128, 128, torch.float32, 16) == ("chunk", "chunk")
    monkeypatch.setattr(la2c, "forced_algo", "chunk")
    assert algos(128, 128, torch.bfloat16, 16) == ("chunk", "chunk")
    assert algos(128, 128, torch.bfloat16, 16, override={"bwd": {"ALGO": "fused"}}) == ("chunk", "fused")


@pytest.mark.parametrize("algo", ["chunk", "fused"])
def test_varlen_tables_built_once_per_cu_seqlens(algo, monkeypatch):
    """Layers sharing one cu_seqlens tensor build its chunk/segment tables (a host sync) once; an in-place change
    of the tensor rebuilds them, and the results stay right."""
    import tnl_kernels.lightning_attn as la

    builds = []
    for name in ("_chunk_tables", "_fused_segments"):
        real = getattr(la, name)
        monkeypatch.setattr(la, name, lambda *a, real=real, name=name: builds.append(name) or real(*a))
    g = torch.Generator().manual_seed(61)
    q, k = torch.randn(1, 70, 2, 16, generator=g), torch.randn(1, 70, 2, 16, generator=g)
    v, slope = torch.randn(1, 70, 2, 32, generator=g), torch.rand(2, generator=g) * 0.3
    cu = torch.tensor([0, 9, 10, 70], dtype=torch.int32)
    phase = {"ALGO": algo, "BT": 16, **({"SEGT": 32} if algo == "fused" else {})}
    cfg = {"fwd": phase, "bwd": phase}
    ref = lightning_attn_recurrent(q.double(), k.double(), v.double(), slope, None, cu)[0]
    for _ in range(3):
        o = tnl_kernels.lightning_attn_triton(q, k, v, slope, None, False, cu, config=cfg)[0]
        assert rel_err(o, ref) < 1e-5
    first = len(builds)
    assert first >= 1
    o = tnl_kernels.lightning_attn_triton(q, k, v, slope, None, False, cu, config=cfg)[0]
    assert len(builds) == first  # cached
    cu[2] = 40  # documents now [0, 9), [9, 40), [40, 70)
    ref = lightning_attn_recurrent(q.double(), k.double(), v.double(), slope, None, cu)[0]
    o = tnl_kernels.lightning_attn_triton(q, k, v, slope, None, False, cu, config=cfg)[0]
    assert len(builds) > first and rel_err(o, ref) < 1e-5


def test_default_walk_compiles_for_sm90_without_spill():
    """The compiled path is only exercised on a GPU; this compiles the default 16-bit 128-wide walk for sm_90 on the
    CPU (benchmarks/sm90_resources.py, in a process without the interpreter) and checks what the H100 timings rely
    on: no spill, 2 programs per SM."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia")
    repo = Path(__file__).resolve().parents[1]
    c = get_config(128, 128, torch.bfloat16, 256)["fwd"]
    cfg = {k: c[k] for k in ("BT", "BV", "warps", "stages")}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(repo / "benchmarks" / "sm90_resources.py"), "--configs", json.dumps([cfg])],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stack"] == 0 and out["programs_per_sm"] >= 2, out
