"""tnl.ops on its Triton backend for CPU tensors (backend=triton -> Triton's interpreter).

The facade end to end: validation, the lazy `tnl_kernels` import under TRITON_INTERPRET=1, argument hand-off and the
results against the float64 references of tnl.reference, forward and every gradient. Tiny shapes (the interpreter is
slow) in fp32 and fp16 only: the interpreter computes bf16 `tl.dot` on raw bit patterns (triton-lang/triton#11584), so
bf16 through Triton is tested on the GPU. Kernel-level tests are in test_kernels_triton.py.
"""

import math
import os
import zlib

import pytest
import torch

# On a machine without CUDA every Triton kernel must run interpreted: TRITON_INTERPRET=1 must be set before triton is
# first imported (tests/conftest.py does it; this line covers running the file on its own). With CUDA, tnl.ops sets it
# lazily when it still can, else these tests skip.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from numerics import rel_err
from tnl import ops, reference  # noqa: E402
from tnl.ops import triton_backend as tb  # noqa: E402

# Relative Frobenius error vs float64. fp32 products are exact ("ieee"); fp16 rounds the operands of every product
# and the chunk states the kernels keep in the input dtype.
RTOL = {torch.float32: 1e-6, torch.float16: 1.5e-3}  # measured: fp32 1.8e-7, fp16 3.2e-4


def kernels_or_skip():
    """tnl_kernels in interpreter mode, or a skip saying why it cannot be tested in this process."""
    if "compiled" in tb.kernel_modes():
        if torch.cuda.is_available():
            pytest.skip("triton was imported compiled in this process (CUDA machine); interpreter tests run on CPU")
        pytest.fail("triton was imported compiled on a machine without CUDA: TRITON_INTERPRET=1 must be set before "
                    "anything imports triton (tests/conftest.py does it)")
    os.environ["TRITON_INTERPRET"] = "1"
    import tnl_kernels

    if not hasattr(tnl_kernels, "lightning_attn_triton"):
        pytest.skip("tnl_kernels has no lightning_attn_triton yet (KERNELS work in progress)")
    assert "compiled" not in tb.kernel_modes()
    return tnl_kernels


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.delenv("TNL_KERNEL_BACKEND", raising=False)
    with ops.using(backend="triton"):
        yield


pytestmark = pytest.mark.usefixtures("poison_empty")




CASES = {  # name: (B, T, H, D, E, cu_seqlens, initial_state, decay)
    "T1": (2, 1, 2, 16, 16, None, True, True),
    "T70": (2, 70, 1, 16, 32, None, True, True),
    "T70_nodecay": (1, 70, 2, 16, 16, None, False, False),
    "packed": (1, 80, 2, 16, 16, [0, 1, 2, 66, 66, 67, 80], True, True),
    "D32_E48": (1, 40, 1, 32, 48, None, True, True),
}


def make_inputs(seed, B, T, H, D, E, dtype, cu, init, decay):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, T, H, D, generator=g) / math.sqrt(D)).to(dtype)
    k = (torch.randn(B, T, H, D, generator=g) / math.sqrt(D)).to(dtype)
    v = torch.randn(B, T, H, E, generator=g).to(dtype)
    slope = torch.rand(H, generator=g) * 0.5 if decay else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    N = B if cu is None else len(cu) - 1
    h0 = torch.randn(N, H, D, E, generator=g) * 0.5 if init else None
    return q, k, v, slope, h0, cu_t, g


def grads_of(fn, tensors, cotangents):
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in tensors]
    o, final = fn(*leaves)
    torch.autograd.backward([o, final], [c.to(o.dtype) if i == 0 else c for i, c in enumerate(cotangents)])
    return o.detach(), final.detach(), [None if x is None else x.grad for x in leaves]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_facade_matches_references(name, dtype):
    kernels_or_skip()
    B, T, H, D, E, cu, init, decay = CASES[name]
    q, k, v, s, h0, cu_t, g = make_inputs(zlib.crc32(f"{name}-{dtype}".encode()), B, T, H, D, E, dtype, cu, init, decay)
    N = B if cu is None else len(cu) - 1
    cot = [torch.randn(B, T, H, E, generator=g), torch.randn(N, H, D, E, generator=g)]
    got_o, got_f, got_g = grads_of(
        lambda q, k, v, h: ops.lightning_attn(q, k, v, s, initial_state=h, output_final_state=True, cu_seqlens=cu_t),
        (q, k, v, h0), cot,
    )
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert got_o.dtype == dtype and got_o.shape == (B, T, H, E)
    assert got_f.dtype == torch.float32 and got_f.shape == (N, H, D, E)
    # reference: the float64 quadratic form on the same (rounded) inputs and cotangents
    want_o, want_f, want_g = grads_of(
        lambda q, k, v, h: reference.lightning_attn_quadratic(q, k, v, s, h, cu_t),
        [None if x is None else x.double() for x in (q, k, v, h0)], [cot[0].to(dtype).double(), cot[1].double()],
    )
    rec_o, rec_f = reference.lightning_attn_recurrent(
        q.double(), k.double(), v.double(), s, None if h0 is None else h0.double(), cu_t
    )
    tol = RTOL[dtype]
    assert rel_err(got_o, want_o) < tol and rel_err(got_o, rec_o) < tol
    assert rel_err(got_f, want_f) < tol and rel_err(got_f, rec_f) < tol
    for got, want, what in zip(got_g, want_g, ("dq", "dk", "dv", "dh0")):
        if want is not None:
            assert torch.isfinite(got).all(), what
            assert rel_err(got, want) < tol, what


def test_triton_facade_large_head_dims():
    """D = 256 with E = 48 (not a power of two), fp32, forward and final state vs the float64 recurrence."""
    kernels_or_skip()
    q, k, v, s, h0, _, _ = make_inputs(256, 1, 20, 1, 256, 48, torch.float32, None, True, True)
    o, f = ops.lightning_attn(q, k, v, s, initial_state=h0, output_final_state=True)
    want_o, want_f = reference.lightning_attn_recurrent(q.double(), k.double(), v.double(), s, h0.double())
    assert rel_err(o, want_o) < RTOL[torch.float32] and rel_err(f, want_f) < RTOL[torch.float32]


def test_triton_and_torch_backends_agree(monkeypatch):
    """Same call, both backends, packed documents with a strided (fused-projection) q/k/v and no final state."""
    kernels_or_skip()
    g = torch.Generator().manual_seed(9)
    qkv = torch.randn(1, 50, 2, 16 + 16 + 16, generator=g) / 4
    q, k, v = qkv[..., :16], qkv[..., 16:32], qkv[..., 32:]
    cu = torch.tensor([0, 10, 11, 50], dtype=torch.int32)
    slope = torch.tensor([0.0, 0.3])
    o_tr, f_tr = ops.lightning_attn(q, k, v, slope, cu_seqlens=cu)
    with ops.using(backend="torch"):
        o_pt, _ = ops.lightning_attn(q, k, v, slope, cu_seqlens=cu)
    assert f_tr is None
    assert rel_err(o_tr, o_pt) < RTOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_srms_norm(dtype):
    tk = kernels_or_skip()
    if not hasattr(tk, "srms_norm_triton"):
        pytest.skip("tnl_kernels has no srms_norm_triton yet (KERNELS work in progress)")
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 5, 48, generator=g) * 2).to(dtype)
    w = torch.randn(3, 5, 48, generator=g, dtype=torch.float64)
    xr = x.double().requires_grad_()
    want = xr / torch.sqrt((xr**2).mean(-1, keepdim=True) + 1e-6)
    (want * w).sum().backward()
    xg = x.clone().requires_grad_()
    y = ops.srms_norm(xg)
    (y.double() * w).sum().backward()
    assert y.dtype == dtype and xg.grad.dtype == dtype
    tol = {torch.float32: 1e-6, torch.float16: 1e-3}[dtype]
    assert rel_err(y, want) < tol and rel_err(xg.grad, xr.grad) < 2 * tol


def test_validation_runs_before_the_kernels():
    """Bad input on the triton backend is the facade's ValueError, never a Triton crash."""
    kernels_or_skip()
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ops.lightning_attn(q, q, q, None, cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="slope"):
        ops.lightning_attn(q, q, q, torch.tensor([0.1, -1.0]))
