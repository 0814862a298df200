"""The Triton kernels (tnl_kernels) on CPU through Triton's interpreter, against the float64 step recurrence.

Triton's interpreter multiplies bf16 `tl.dot` operands as raw bit patterns (triton-lang/triton#11584), so LA2 runs
here in fp16 and fp32; bf16 LA2 is checked on the GPU (tests/test_kernels_gpu.py). Every output buffer the kernels
allocate is poisoned with NaN, so an element the kernels fail to write fails the comparison.
"""

import json

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before any import on machines without CUDA. With CUDA the kernels are
# compiled, and the same checks run at real sizes in tests/test_kernels_gpu.py.
if torch.cuda.is_available():
    pytest.skip("interpreter tests run on CPU-only machines", allow_module_level=True)

import tnl_kernels  # noqa: E402
from numerics import rel_err  # noqa: E402
from tnl.reference import lightning_attn_recurrent  # noqa: E402

pytestmark = pytest.mark.usefixtures("poison_empty")

# relative-norm tolerance per input dtype (fp32 products are exact "ieee"; fp16 rounds the operands of each product)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}




rel = rel_err


def make_inputs(B, T, H, D, E, dtype, decay, with_h0, cu, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g).to(dtype)
    k = torch.randn(B, T, H, D, generator=g).to(dtype)
    v = torch.randn(B, T, H, E, generator=g).to(dtype)
    slope = (torch.rand(H, generator=g) * 0.4 + 0.01) if decay else None
    N = B if cu is None else len(cu) - 1
    h0 = torch.randn(N, H, D, E, generator=g) if with_h0 else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    return q, k, v, slope, h0, cu_t, g


def check(q, k, v, slope, h0, cu, g, with_final=True):
    """Forward and every gradient of the kernel vs the float64 recurrence; returns the relative errors."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    h0l = None if h0 is None else h0.detach().clone().requires_grad_()
    o, ht = tnl_kernels.lightning_attn_triton(*leaves, slope, h0l, with_final, cu)
    assert o.dtype == q.dtype and o.shape == v.shape
    do = torch.randn(o.shape, generator=g).to(o.dtype)
    outs, grads = [o], [do]
    if with_final:
        assert ht.dtype == torch.float32 and ht.shape == (cu.numel() - 1 if cu is not None else q.shape[0],
                                                          *q.shape[2:], v.shape[-1])
        dht = torch.randn(ht.shape, generator=g)
        outs.append(ht)
        grads.append(dht)
    else:
        assert ht is None
    torch.autograd.backward(outs, grads)

    r = [x.detach().double().requires_grad_() for x in (q, k, v)]
    rh0 = None if h0 is None else h0.detach().double().requires_grad_()
    ro, rht = lightning_attn_recurrent(*r, slope, rh0, cu)
    rgrads = [do.double()] + ([grads[1].double()] if with_final else [])
    torch.autograd.backward([ro, rht] if with_final else [ro], rgrads)
    errs = {"o": rel(o, ro), "dq": rel(leaves[0].grad, r[0].grad), "dk": rel(leaves[1].grad, r[1].grad),
            "dv": rel(leaves[2].grad, r[2].grad)}
    if with_final:
        errs["final_state"] = rel(ht, rht)
    if h0 is not None:
        errs["d_initial_state"] = rel(h0l.grad, rh0.grad)
    tol = TOL[q.dtype]
    bad = {n: e for n, e in errs.items() if not e <= tol}  # `not <=` also catches NaN
    assert not bad, f"relative errors above {tol}: {bad} (all: {errs})"
    return errs


CASES = {
    # name: (B, T, H, D, E, dtype, decay, initial_state, cu_seqlens)
    "T1": (2, 1, 2, 16, 16, torch.float32, True, True, None),
    "T1_nodecay_fp16": (1, 1, 1, 16, 32, torch.float16, False, False, None),
    "T70_E48_decay_h0": (2, 70, 2, 32, 48, torch.float32, True, True, None),
    "T70_E48_nodecay_fp16": (2, 70, 2, 32, 48, torch.float16, False, False, None),
    "T129_decay_fp16_h0": (1, 129, 2, 16, 16, torch.float16, True, True, None),
    "packed_1tok_docs_h0": (1, 83, 2, 16, 32, torch.float32, True, True, [0, 1, 40, 41, 42, 83]),
    "packed_nodecay_fp16": (1, 100, 2, 32, 16, torch.float16, False, False, [0, 65, 66, 100]),
    "packed_h0_only_1tok": (1, 3, 1, 16, 16, torch.float32, True, True, [0, 1, 2, 3]),
    "D256": (1, 40, 1, 256, 16, torch.float32, True, True, None),
    "D256_E48_fp16": (1, 33, 1, 256, 48, torch.float16, False, False, None),
    "D48_E80_packed": (1, 70, 1, 48, 80, torch.float32, True, False, [0, 5, 70]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_lightning_attn_matches_recurrence(name):
    B, T, H, D, E, dtype, decay, with_h0, cu = CASES[name]
    seed = sum(map(ord, name))
    check(*make_inputs(B, T, H, D, E, dtype, decay, with_h0, cu, seed))


def test_no_final_state_and_summed_output():
    """output_final_state=False returns None; o.sum() backward gives a stride-0 grad_output."""
    q, k, v, slope, h0, cu, g = make_inputs(2, 67, 2, 16, 32, torch.float32, True, True, None, 11)
    check(q, k, v, slope, h0, cu, g, with_final=False)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, ht = tnl_kernels.lightning_attn_triton(*leaves, slope, None, False, None)
    assert ht is None
    o.sum().backward()
    r = [x.double().requires_grad_() for x in (q, k, v)]
    ro, _ = lightning_attn_recurrent(*r, slope, None, None)
    ro.sum().backward()
    for a, b in zip(leaves, r):
        assert rel(a.grad, b.grad) < TOL[torch.float32]


def test_strided_inputs_read_in_place():
    """q, k, v as views of one fused projection and a (B, H, T, D) tensor transposed: no copies needed."""
    g = torch.Generator().manual_seed(5)
    B, T, H, D, E = 2, 45, 2, 16, 32
    fused = torch.randn(B, T, H, 2 * D + E, generator=g)
    q, k, v = fused[..., :D], fused[..., D:2 * D], fused[..., 2 * D:]
    q = torch.randn(B, H, T, D, generator=g).transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    slope = torch.rand(H, generator=g) * 0.3
    check(q, k, v, slope, None, None, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_srms_norm(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, 100, generator=g) * 3).to(dtype).requires_grad_()
    y = tnl_kernels.srms_norm_triton(x, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    dy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(dy)
    xr = x.detach().double().requires_grad_()
    yr = xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-6)
    yr.backward(dy.double())
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert rel(y, yr) < tol
    assert rel(x.grad, xr.grad) < tol


# Block-size variants the tuner (benchmarks/tune_la2.py) may pick: each must compute the same function.
C = {"ALGO": "chunk"}  # these keys are the chunked algorithm's (16-bit inputs default to the fused walk)
CONFIGS = {
    "bt128_wide_out": {"fwd": {**C, "BT": 128, "BK": 32, "BV": 16, "BKO": 16, "BVO": 64},
                       "bwd": {**C, "BT": 128, "BVB": 16}},
    "bt32_small_tiles": {"fwd": {**C, "BT": 32, "BK": 16, "BV": 32, "BKO": 32, "BVO": 16},
                         "bwd": {**C, "BT": 32, "BK": 16, "BV": 16, "BVB": 32}},
    "bt16": {"fwd": {**C, "BT": 16}, "bwd": {**C, "BT": 16}},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lightning_attn_block_configs(name, monkeypatch):
    q, k, v, slope, h0, cu, g = make_inputs(1, 150, 2, 32, 48, torch.float32, True, True, [0, 1, 99, 100, 150], 21)
    real = tnl_kernels.lightning_attn_triton
    monkeypatch.setattr(tnl_kernels, "lightning_attn_triton", lambda *a: real(*a, config=CONFIGS[name]))
    check(q, k, v, slope, h0, cu, g)


def test_config_keys_of_another_algorithm_are_an_error():
    """A phase key that its algorithm does not read (here a fused key given to the chunked one, and SEG, the chunked
    segmented walk that was removed) is one clear error, not a silently ignored setting."""
    from tnl_kernels.la2_config import get_config

    with pytest.raises(ValueError, match="SEGT"):
        get_config(64, 64, torch.float32, 4, {"fwd": {**C, "SEGT": 512}})
    with pytest.raises(ValueError, match="SEG"):
        get_config(64, 64, torch.float32, 4, {"bwd": {**C, "SEG": 4}})
    assert get_config(64, 64, torch.bfloat16, 4, {"bwd": {"ALGO": "fused", "OVERLAP": True}})["bwd"]["OVERLAP"]


def _tuned_entries():
    from tnl_kernels.la2_config import TUNED_PATH

    tables = json.loads(TUNED_PATH.read_text()) if TUNED_PATH.exists() else {}
    return sorted((f"{gpu}:{key}", cfg) for gpu, table in tables.items() for key, cfg in table.items())


def test_tuned_table_is_chosen_per_gpu_model(monkeypatch):
    """A GPU's own tuned entry wins; a key it lacks, an unknown GPU and no GPU at all take the reference GPU's."""
    import tnl_kernels.la2_config as la2c

    key = la2c.table_key(torch.bfloat16, 128, 128, 16)
    other = la2c.table_key(torch.bfloat16, 128, 128, 1024)
    ref = {"fwd": {"ALGO": "fused", "BT": 32}}
    tables = {la2c.REFERENCE_GPU: {key: ref, other: ref}, "GPU X": {key: {"fwd": {"ALGO": "fused", "BT": 128}}}}
    monkeypatch.setattr(la2c, "_tuned", lambda: tables)
    dev = torch.device("cuda", 0)
    for gpu, nh, bt in [("GPU X", 16, 128), ("GPU X", 1024, 32), ("GPU Y", 16, 32)]:
        monkeypatch.setattr(la2c, "_device_name", lambda i, gpu=gpu: gpu)
        assert la2c.get_config(128, 128, torch.bfloat16, nh, device=dev)["fwd"]["BT"] == bt, (gpu, nh)
    assert la2c.get_config(128, 128, torch.bfloat16, 16)["fwd"]["BT"] == 32
    assert la2c.table_note("GPU X") == "LA2 blocks: tuned table for GPU X"
    assert "no tuned table for GPU Y" in la2c.table_note("GPU Y") and la2c.REFERENCE_GPU in la2c.table_note("GPU Y")
    monkeypatch.setattr(la2c, "_tuned", lambda: {})
    assert "heuristic" in la2c.table_note("GPU X")
    # a table file of the older single-GPU form is one clear error
    with pytest.raises(ValueError, match="not under a GPU name"):
        la2c.check_tables({key: ref}, "la2_tuned.json")
    assert la2c.check_tables(tables, "la2_tuned.json") is tables


@pytest.mark.parametrize("key,cfg", _tuned_entries() or [pytest.param("none", None, marks=pytest.mark.skip)])
def test_lightning_attn_tuned_table_configs(key, cfg, monkeypatch):
    """Every block config of the committed tuned table computes the same function (small shape, fp32). Segments
    are shortened to 128 tokens so that the entry's segment-sum settings (BKS, BVS, BTS, SEGCUT) run too."""
    cfg = {ph: dict(c, SEGT=min(c["SEGT"], 128)) if c.get("SEGT") else c for ph, c in cfg.items()}
    q, k, v, slope, h0, cu, g = make_inputs(1, 300, 1, 32, 48, torch.float32, True, True, [0, 130, 131, 300], 31)
    real = tnl_kernels.lightning_attn_triton
    monkeypatch.setattr(tnl_kernels, "lightning_attn_triton", lambda *a: real(*a, config=cfg))
    check(q, k, v, slope, h0, cu, g)


@pytest.mark.parametrize("D,E,dmax,emax,dtype,cu", [
    (48, 24, 16, 128, torch.float32, None), (40, 24, 16, 128, torch.float16, [0, 1, 30, 57]),
    (32, 24, 16, 128, torch.float16, None),
    (256, 24, 512, 128, torch.float32, None),
    (24, 48, 128, 16, torch.float32, None), (40, 40, 16, 16, torch.float16, [0, 1, 30, 57])])
def test_head_dim_split(D, E, dmax, emax, dtype, cu, monkeypatch):
    """Key dims above DMAX run as near-equal parts (48 -> 3 x 16; 40 -> 14 + 14 + 12, packed; 32 -> 2 x 16, added
    in 16 bits with one rounding) whose outputs add and
    whose states stack along D; value dims above EMAX as parts whose outputs and states are concatenated along E
    (48 -> 3 x 16; 40 x 40 splits both ways); DMAX = 512 runs D = 256 in one call. With initial and final states."""
    B = 2 if cu is None else 1
    q, k, v, slope, h0, cu_t, g = make_inputs(B, 57, 2, D, E, dtype, True, True, cu, 51 + D + E)
    real = tnl_kernels.lightning_attn_triton
    monkeypatch.setattr(tnl_kernels, "lightning_attn_triton",
                        lambda *a: real(*a, config={"DMAX": dmax, "EMAX": emax}))
    check(q, k, v, slope, h0, cu_t, g)


def test_two_key_parts_add_with_one_rounding():
    """Two key-dim parts add in 16 bits: bit-identical to summing the parts' outputs in fp32 and rounding once."""
    g = torch.Generator().manual_seed(77)
    q, k = (torch.randn(1, 40, 2, 32, generator=g).half() for _ in range(2))
    v = torch.randn(1, 40, 2, 24, generator=g).half()
    slope = torch.tensor([0.05, 0.3])
    o = tnl_kernels.lightning_attn_triton(q, k, v, slope, config={"DMAX": 16})[0]
    parts = [tnl_kernels.lightning_attn_triton(q[..., s], k[..., s], v, slope)[0]
             for s in (slice(0, 16), slice(16, 32))]
    assert torch.equal(o, (parts[0].float() + parts[1].float()).half())
