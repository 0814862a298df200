"""tnl.ops on its torch path against the float64 references of tnl.reference, plus validation and backend choice.

Every test draws fresh random inputs from its own seed. Errors are relative: ||got - want|| / ||want|| (Frobenius),
with tolerances per dtype (RTOL). The Triton path through the interpreter is in test_ops_triton_interp.py.
"""

import math
import os
import sys
import types
import zlib

import pytest
import torch

from numerics import rel_err
from tnl import ops, reference
from tnl.ops import triton_backend

# Relative Frobenius error allowed on the torch path: both sides see the same rounded inputs, so what is left is fp32
# accumulation plus rounding the results to the dtype (measured: fp32 2.3e-7, fp16 3.0e-4, bf16 2.4e-3).
RTOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.delenv("TNL_KERNEL_BACKEND", raising=False)
    with ops.using(backend="torch"):
        yield




def make_inputs(seed, B, T, H, D, E, dtype, cu=None, init=False, slope="rand"):
    """q, k scaled like a normalised projection, a mix of decays (one head without decay), optional packed docs."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, T, H, D, generator=g) / math.sqrt(D)).to(dtype)
    k = (torch.randn(B, T, H, D, generator=g) / math.sqrt(D)).to(dtype)
    v = torch.randn(B, T, H, E, generator=g).to(dtype)
    if slope == "rand":
        s = torch.rand(H, generator=g) * 0.5
        s[0] = 0.0
    else:
        s = slope
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    N = B if cu is None else len(cu) - 1
    h0 = torch.randn(N, H, D, E, generator=g) * 0.5 if init else None
    return q, k, v, s, h0, cu_t


CASES = {  # name: (B, T, H, D, E, cu_seqlens, initial_state, slope)
    "T1": (2, 1, 2, 16, 16, None, True, "rand"),
    "T100": (2, 100, 2, 16, 24, None, True, "rand"),
    "T130_nodecay": (1, 130, 2, 16, 16, None, False, None),
    "T128_whole_chunks": (2, 128, 2, 8, 8, None, True, "rand"),
    "packed": (1, 200, 2, 16, 16, [0, 1, 2, 66, 67, 130, 130, 200], True, "rand"),
    "packed_aligned": (1, 128, 2, 8, 8, [0, 64, 128], True, "rand"),
    "packed_noinit": (1, 90, 3, 8, 8, [0, 1, 40, 41, 90], False, "rand"),
    "D256_E48": (1, 70, 1, 256, 48, None, True, "rand"),
}


def run_grads(fn, q, k, v, h0, with_final, seed):
    """o, final and the gradients of q, k, v, h0 for fixed random cotangents."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (q, k, v, h0)]
    o, final = fn(*leaves)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum()
    if with_final:
        loss = loss + (final.double() * torch.randn(final.shape, generator=g, dtype=torch.float64)).sum()
    loss.backward()
    return o.detach(), (None if final is None else final.detach()), [None if x is None else x.grad for x in leaves]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_path_matches_references(name, dtype):
    B, T, H, D, E, cu, init, slope = CASES[name]
    seed = zlib.crc32(f"{name}-{dtype}".encode())
    q, k, v, s, h0, cu_t = make_inputs(seed, B, T, H, D, E, dtype, cu, init, slope)
    want_rec = reference.lightning_attn_recurrent(
        q.double(), k.double(), v.double(), s, None if h0 is None else h0.double(), cu_t
    )
    got_o, got_f, got_g = run_grads(
        lambda q, k, v, h: ops.lightning_attn(q, k, v, s, initial_state=h, output_final_state=True, cu_seqlens=cu_t),
        q, k, v, h0, True, seed,
    )
    want_o, want_f, want_g = run_grads(
        lambda q, k, v, h: reference.lightning_attn_quadratic(q, k, v, s, h, cu_t),
        q.double(), k.double(), v.double(), None if h0 is None else h0.double(), True, seed,
    )
    assert got_o.dtype == dtype and got_o.shape == (B, T, H, E)
    assert got_f.dtype == torch.float32 and got_f.shape == (len(cu) - 1 if cu else B, H, D, E)
    tol = RTOL[dtype]
    assert rel_err(got_o, want_rec[0]) < tol
    assert rel_err(got_f, want_rec[1]) < tol
    assert rel_err(got_o, want_o) < tol
    assert rel_err(got_f, want_f) < tol
    for got, want, what in zip(got_g, want_g, ("dq", "dk", "dv", "dh0")):
        if want is None:
            continue
        assert got.dtype == (dtype if what != "dh0" else torch.float32)
        assert rel_err(got, want) < tol, what


@pytest.mark.parametrize("name", ["T100", "packed", "packed_aligned"])
def test_references_agree_in_float64(name):
    """Quadratic form, recurrence and the chunked path (any chunk size) agree to rounding, outputs and gradients."""
    B, T, H, D, E, cu, init, slope = CASES[name]
    q, k, v, s, h0, cu_t = make_inputs(7, B, T, H, D, E, torch.float64, cu, init, slope)
    want = run_grads(lambda *a: reference.lightning_attn_quadratic(*a[:3], s, a[3], cu_t), q, k, v, h0, True, 1)
    rec = run_grads(lambda *a: reference.lightning_attn_recurrent(*a[:3], s, a[3], cu_t), q, k, v, h0, True, 1)
    for C in (64, 16, 7):
        got = run_grads(
            lambda *a, C=C: reference.lightning_attn_chunked(*a[:3], s, a[3], cu_t, chunk_size=C), q, k, v, h0, True, 1
        )
        for other in (got, rec):
            assert rel_err(other[0], want[0]) < 1e-12
            assert rel_err(other[1], want[1]) < 1e-12
            for a, b in zip(other[2], want[2]):
                if b is not None:
                    assert rel_err(a, b) < 1e-12


def test_strong_decay_and_strided_inputs():
    """Large slopes underflow to exact zeros, never NaN; slices of a fused projection give the contiguous result."""
    B, T, H, D, E = 2, 77, 3, 16, 16
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(B, T, H, 2 * D + E, generator=g)
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    slope = torch.tensor([0.0, 5.0, 200.0])
    o, f = ops.lightning_attn(q, k, v, slope, output_final_state=True)
    oc, fc = ops.lightning_attn(q.contiguous(), k.contiguous(), v.contiguous(), slope, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(f).all()
    assert torch.equal(o, oc) and torch.equal(f, fc)
    want = reference.lightning_attn_recurrent(q.double(), k.double(), v.double(), slope)
    assert rel_err(o, want[0]) < RTOL[torch.float32]
    # with slope 200 each token only sees itself: o_t = (q_t . k_t) v_t
    assert torch.allclose(o[:, :, 2], (q[:, :, 2] * k[:, :, 2]).sum(-1, keepdim=True) * v[:, :, 2], atol=1e-5)


def test_final_state_only_when_asked():
    q, k, v, s, _, _ = make_inputs(0, 1, 5, 2, 8, 8, torch.float32)
    o, f = ops.lightning_attn(q, k, v, s)
    assert f is None and o.shape == v.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step_decoding_matches_chunked(dtype):
    """Prefill with lightning_attn, then decode token by token with lightning_attn_step == one full-sequence call."""
    B, T, H, D, E, P = 2, 70, 2, 16, 12, 50
    q, k, v, s, h0, _ = make_inputs(11, B, T, H, D, E, dtype, init=True)
    o_full, f_full = ops.lightning_attn(q, k, v, s, initial_state=h0, output_final_state=True)
    o_pre, state = ops.lightning_attn(q[:, :P], k[:, :P], v[:, :P], s, initial_state=h0, output_final_state=True)
    outs = [o_pre]
    for t in range(P, T):
        o_t, state = ops.lightning_attn_step(q[:, t], k[:, t], v[:, t], s, state)
        assert o_t.dtype == dtype and state.dtype == torch.float32
        outs.append(o_t[:, None])
    assert rel_err(torch.cat(outs, 1), o_full) < RTOL[dtype]
    assert rel_err(state, f_full) < 1e-5
    # from scratch (state None), no decay
    o1, st = ops.lightning_attn_step(q[:, 0], k[:, 0], v[:, 0], None, None)
    want = reference.lightning_attn_recurrent(q[:, :1].double(), k[:, :1].double(), v[:, :1].double())
    assert rel_err(o1, want[0][:, 0]) < RTOL[dtype] and rel_err(st, want[1]) < 1e-6


@pytest.mark.parametrize("decay,with_state", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step_matches_the_reference_step(decay, with_state, dtype):
    """The facade's few-kernel decode step against reference.lightning_attn_step in float64 (state, decay, or
    neither) on fresh random inputs: its state is float32, its output in q's dtype."""
    g = torch.Generator().manual_seed(17 + 2 * decay + with_state)
    B, H, D, E = 3, 5, 24, 20
    q, k = (torch.randn(B, H, D, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(B, H, E, generator=g).to(dtype)
    s = torch.rand(H, generator=g) * 0.7 if decay else None
    st = torch.randn(B, H, D, E, generator=g) if with_state else None
    o, S = ops.lightning_attn_step(q, k, v, s, st)
    o_ref, S_ref = reference.lightning_attn_step(q.double(), k.double(), v.double(), s,
                                                 None if st is None else st.double())
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel_err(o, o_ref) < RTOL[dtype] and rel_err(S, S_ref) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_srms_norm(dtype):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 7, 40, generator=g) * 3).to(dtype)
    w = torch.randn(3, 7, 40, generator=g, dtype=torch.float64)
    xr = x.double().requires_grad_()
    want = xr / torch.sqrt((xr**2).mean(-1, keepdim=True) + 1e-6)
    (want * w).sum().backward()
    xg = x.clone().requires_grad_()
    y = ops.srms_norm(xg)
    (y.double() * w).sum().backward()
    assert y.dtype == dtype and xg.grad.dtype == dtype
    assert rel_err(y, want) < RTOL[dtype] and rel_err(xg.grad, xr.grad) < 2 * RTOL[dtype]
    xd = x.double()
    assert rel_err(ops.srms_norm(x, eps=0.5), xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 0.5)) < RTOL[dtype]


# ------------------------------------------------------------------------------------------------------- validation
def _good():
    q, k, v, s, h0, _ = make_inputs(0, 2, 10, 2, 8, 6, torch.float32, init=True)
    return dict(q=q, k=k, v=v, slope=s, initial_state=h0)


def _call(**changes):
    a = _good()
    a.update(changes)
    return ops.lightning_attn(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("slope"), **a)


def _packed(**changes):
    q, k, v, s, h0, cu = make_inputs(0, 1, 10, 2, 8, 6, torch.float32, cu=[0, 3, 10], init=True)
    a = dict(q=q, k=k, v=v, slope=s, initial_state=h0, cu_seqlens=cu)
    a.update(changes)
    return ops.lightning_attn(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("slope"), **a)


G = _good()
BAD = {  # id: (thunk, exception, words the message must contain)
    "q_not_tensor": (lambda: _call(q=G["q"].numpy()), TypeError, ["q", "Tensor"]),
    "q_rank": (lambda: _call(q=G["q"][0]), ValueError, ["q", "4-D"]),
    "v_rank": (lambda: _call(v=G["v"][..., None]), ValueError, ["v", "4-D"]),
    "k_shape": (lambda: _call(k=G["k"][:, :9]), ValueError, ["k", "shape"]),
    "k_head_dim": (lambda: _call(k=G["k"][..., :4].contiguous()), ValueError, ["k", "shape"]),
    "v_T": (lambda: _call(v=G["v"][:, :9]), ValueError, ["v"]),
    "v_H": (lambda: _call(v=G["v"][:, :, :1]), ValueError, ["v"]),
    "v_B": (lambda: _call(v=G["v"][:1]), ValueError, ["v"]),
    "dtype_f64": (lambda: _call(q=G["q"].double(), k=G["k"].double(), v=G["v"].double()), TypeError, ["q", "float64"]),
    "dtype_int": (lambda: _call(q=G["q"].int(), k=G["k"].int(), v=G["v"].int()), TypeError, ["q", "int32"]),
    "dtype_mismatch_k": (lambda: _call(k=G["k"].half()), TypeError, ["k", "dtype"]),
    "dtype_mismatch_v": (lambda: _call(v=G["v"].bfloat16()), TypeError, ["v", "dtype"]),
    "device_mismatch_v": (lambda: _call(v=G["v"].to("meta")), ValueError, ["v", "meta"]),
    "stride_q": (lambda: _call(q=G["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), ValueError, ["q", "stride"]),
    "stride_v": (lambda: _call(v=G["v"].transpose(-1, -2).contiguous().transpose(-1, -2)), ValueError, ["v", "stride"]),
    "D_too_big": (lambda: _call(q=torch.zeros(1, 2, 1, 257), k=torch.zeros(1, 2, 1, 257), v=torch.zeros(1, 2, 1, 8),
                                slope=None, initial_state=None), ValueError, ["q", "256"]),
    "E_too_big": (lambda: _call(v=torch.zeros(2, 10, 2, 300), initial_state=None), ValueError, ["v", "256"]),
    "empty_T": (lambda: _call(q=G["q"][:, :0], k=G["k"][:, :0], v=G["v"][:, :0]), ValueError, ["q", "empty"]),
    "slope_list": (lambda: _call(slope=[0.1, 0.2]), TypeError, ["slope", "Tensor"]),
    "slope_shape": (lambda: _call(slope=torch.zeros(3)), ValueError, ["slope", "shape"]),
    "slope_2d": (lambda: _call(slope=torch.zeros(1, 2)), ValueError, ["slope", "shape"]),
    "slope_dtype": (lambda: _call(slope=torch.zeros(2, dtype=torch.bfloat16)), TypeError, ["slope", "float32"]),
    "slope_negative": (lambda: _call(slope=torch.tensor([0.1, -0.2])), ValueError, ["slope", ">= 0"]),
    "slope_nan": (lambda: _call(slope=torch.tensor([0.1, float("nan")])), ValueError, ["slope", "finite"]),
    "slope_inf": (lambda: _call(slope=torch.tensor([0.1, float("inf")])), ValueError, ["slope", "finite"]),
    "slope_device": (lambda: _call(slope=torch.zeros(2, device="meta")), ValueError, ["slope", "meta"]),
    "state_dtype": (lambda: _call(initial_state=G["initial_state"].half()), TypeError, ["initial_state", "float32"]),
    "state_shape": (lambda: _call(initial_state=G["initial_state"][:1]), ValueError, ["initial_state", "shape"]),
    "state_DE_swapped": (lambda: _call(initial_state=G["initial_state"].transpose(-1, -2)), ValueError,
                         ["initial_state", "shape"]),
    "state_not_tensor": (lambda: _call(initial_state=1.0), TypeError, ["initial_state", "Tensor"]),
    "final_flag": (lambda: _call(output_final_state="yes"), TypeError, ["output_final_state"]),
    "cu_dtype": (lambda: _packed(cu_seqlens=torch.tensor([0, 3, 10])), TypeError, ["cu_seqlens", "int32"]),
    "cu_list": (lambda: _packed(cu_seqlens=[0, 3, 10]), TypeError, ["cu_seqlens", "Tensor"]),
    "cu_2d": (lambda: _packed(cu_seqlens=torch.tensor([[0, 3, 10]], dtype=torch.int32)), ValueError, ["cu_seqlens"]),
    "cu_short": (lambda: _packed(cu_seqlens=torch.tensor([0], dtype=torch.int32)), ValueError, ["cu_seqlens"]),
    "cu_start": (lambda: _packed(cu_seqlens=torch.tensor([1, 3, 10], dtype=torch.int32)), ValueError,
                 ["cu_seqlens", "start at 0"]),
    "cu_end": (lambda: _packed(cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32)), ValueError,
               ["cu_seqlens", "end at T"]),
    "cu_past_end": (lambda: _packed(cu_seqlens=torch.tensor([0, 3, 11], dtype=torch.int32)), ValueError,
                    ["cu_seqlens", "end at T"]),
    "cu_decreasing": (lambda: _packed(cu_seqlens=torch.tensor([0, 6, 3, 10], dtype=torch.int32), initial_state=None),
                      ValueError, ["cu_seqlens", "non-decreasing"]),
    "cu_batch": (lambda: _call(cu_seqlens=torch.tensor([0, 3, 10], dtype=torch.int32), initial_state=None),
                 ValueError, ["cu_seqlens", "batch"]),
    "cu_state_N": (lambda: _packed(initial_state=torch.zeros(1, 2, 8, 6)), ValueError, ["initial_state", "shape"]),
    "cu_device": (lambda: _packed(cu_seqlens=torch.tensor([0, 3, 10], dtype=torch.int32, device="meta")), ValueError,
                  ["cu_seqlens", "meta"]),
    "step_rank": (lambda: ops.lightning_attn_step(G["q"], G["k"], G["v"], None, None), ValueError, ["q", "3-D"]),
    "step_state": (lambda: ops.lightning_attn_step(G["q"][:, 0], G["k"][:, 0], G["v"][:, 0], None,
                                                   torch.zeros(2, 2, 6, 8)), ValueError, ["state", "shape"]),
    "step_slope": (lambda: ops.lightning_attn_step(G["q"][:, 0], G["k"][:, 0], G["v"][:, 0], -G["slope"] - 1, None),
                   ValueError, ["slope"]),
    "norm_dtype": (lambda: ops.srms_norm(torch.zeros(3, dtype=torch.int64)), TypeError, ["x"]),
    "norm_not_tensor": (lambda: ops.srms_norm([1.0]), TypeError, ["x"]),
    "norm_eps": (lambda: ops.srms_norm(torch.zeros(3), eps=-1.0), ValueError, ["eps"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_validation_errors_name_the_argument(case):
    thunk, exc, words = BAD[case]
    with pytest.raises(exc) as info:
        thunk()
    for w in words:
        assert w in str(info.value), (case, str(info.value))


def test_good_arguments_pass_validation():
    o, f = _call(output_final_state=True)
    assert o.shape == (2, 10, 2, 6) and f.shape == (2, 2, 8, 6)
    o, f = _packed(output_final_state=True)
    assert o.shape == (1, 10, 2, 6) and f.shape == (2, 2, 8, 6)


# ---------------------------------------------------------------------------------------------------- backend choice
def test_backend_setting_and_env_override(monkeypatch):
    """auto: Triton exactly on CUDA; configure(backend=) names one; TNL_KERNEL_BACKEND overrides the setting."""
    with ops.using(backend="auto"):
        assert ops.backend(torch.device("cpu")) == "torch"
        assert ops.backend("cuda") == "triton"
    assert ops.backend("cuda") == "torch"  # the fixture's setting
    with ops.using(backend="triton"):
        assert ops.backend("cpu") == "triton"
    monkeypatch.setenv("TNL_KERNEL_BACKEND", "Triton")
    assert ops.backend("cpu") == "triton"
    assert ops.settings().overrides == {"backend": "TNL_KERNEL_BACKEND=Triton"}
    monkeypatch.setenv("TNL_KERNEL_BACKEND", "cuda")
    with pytest.raises(ValueError, match="TNL_KERNEL_BACKEND"):
        _call()
    with pytest.raises(ValueError, match="TNL_KERNEL_BACKEND"):
        ops.srms_norm(torch.ones(4))
    monkeypatch.delenv("TNL_KERNEL_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of auto, triton, torch"):
        ops.configure(backend="cuda")
    assert ops.backend("cuda") == "torch"  # a rejected value changes nothing


def test_triton_backend_on_cpu_uses_interpreter_and_kernel_entry(monkeypatch):
    """With triton forced on CPU tensors, tnl.ops sets TRITON_INTERPRET=1 and hands validated args to tnl_kernels."""
    if "compiled" in triton_backend.kernel_modes() and torch.cuda.is_available():
        pytest.skip("triton was imported compiled in this process (CUDA machine)")
    calls = []

    def fake_attn(q, k, v, slope, initial_state, output_final_state, cu_seqlens):
        calls.append((q, k, v, slope, initial_state, output_final_state, cu_seqlens))
        return torch.zeros_like(v), torch.zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])

    fake = types.ModuleType("tnl_kernels")
    fake.lightning_attn_triton = fake_attn
    fake.srms_norm_triton = lambda x, eps: x * 0 + eps
    fake.la2_config = types.SimpleNamespace(forced_algo="stale")
    monkeypatch.setitem(sys.modules, "tnl_kernels", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(triton_backend, "_mode_ok", set())
    ops.configure(backend="triton", la2_algo="chunk")  # restored by the fixture
    o, f = _call()
    assert f is None and len(calls) == 1 and calls[0][5] is False
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert fake.la2_config.forced_algo == "chunk"  # the setting reaches the kernels on every call
    ops.configure(la2_algo="auto")
    _call()
    assert fake.la2_config.forced_algo is None
    assert torch.equal(ops.srms_norm(torch.ones(3), eps=0.25), torch.full((3,), 0.25))
    del fake.lightning_attn_triton
    with pytest.raises(RuntimeError, match="lightning_attn_triton"):
        _call()


def _dummy_kernel(x):
    pass


def test_compiled_kernels_refuse_cpu_tensors(monkeypatch):
    """If tnl_kernels was imported compiled, a CPU call on the triton backend says how to fix it, not a Triton crash."""
    from triton.runtime.jit import JITFunction

    fake = types.ModuleType("tnl_kernels.fake_compiled")
    fake.kernel = JITFunction(_dummy_kernel)
    monkeypatch.setitem(sys.modules, "tnl_kernels.fake_compiled", fake)
    ops.configure(backend="triton")  # restored by the fixture
    monkeypatch.setattr(triton_backend, "_mode_ok", set())  # the check runs once per device type and process
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _call()


def test_value_checks_are_remembered_but_see_in_place_changes():
    """A passed slope/cu_seqlens check is not repeated for the same tensor, unless it was modified in place."""
    a = _good()
    slope = a["slope"].clone()
    ops.lightning_attn(a["q"], a["k"], a["v"], slope)
    slope[1] = -0.5
    with pytest.raises(ValueError, match="slope"):
        ops.lightning_attn(a["q"], a["k"], a["v"], slope)
    q, k, v, s, _, cu = make_inputs(0, 1, 10, 2, 8, 6, torch.float32, cu=[0, 3, 10])
    ops.lightning_attn(q, k, v, s, cu_seqlens=cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.lightning_attn(q[:, :9], k[:, :9], v[:, :9], s, cu_seqlens=cu)  # same tensor, other T
    cu[1] = 11
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.lightning_attn(q, k, v, s, cu_seqlens=cu)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_facade_on_cuda_matches_torch_path(monkeypatch, dtype):
    """On CUDA the default backend is Triton (compiled); it agrees with the torch path, packed documents and states."""
    ops.configure(backend="auto")  # restored by the fixture
    q, k, v, s, h0, cu = make_inputs(21, 1, 3000, 4, 64, 48, dtype, cu=[0, 1, 700, 701, 2999, 3000], init=True)
    q, k, v, s, h0, cu = (x.cuda() for x in (q, k, v, s, h0, cu))
    assert ops.backend(q.device) == "triton"
    o, f = ops.lightning_attn(q, k, v, s, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    with ops.using(backend="torch"):
        o_ref, f_ref = ops.lightning_attn(q, k, v, s, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert o.dtype == dtype and f.dtype == torch.float32
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    assert rel_err(o, o_ref) < tol and rel_err(f, f_ref) < tol
    with pytest.raises(ValueError, match="v is on cpu"):
        ops.lightning_attn(q, k, v.cpu(), s)
    x = torch.randn(4, 100, device="cuda", dtype=dtype)
    assert rel_err(ops.srms_norm(x), reference.srms_norm(x.double())) < max(RTOL[dtype], 1e-5)
