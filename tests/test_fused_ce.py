"""The fused LM-head loss (tnl.ops.loss + kernels/tnl_kernels/fused_ce.py) and lm_head_loss's choice of path, on CPU.

The Triton kernel runs under Triton's interpreter (fp32 and fp16 only: the interpreter's bf16 is unreliable; bf16 is
checked on the GPU by the `gpu` test at the end). Everything is compared with plain F.cross_entropy on float64 logits:
the loss, d hidden and d weight, on fresh random inputs with awkward shapes (rows not a multiple of anything, V = 1000,
chunk sizes that do not divide N, one row) and ignored targets, including a whole ignored chunk.
"""

import importlib
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # conftest does it too; this covers running the file on its own
    os.environ.setdefault("TRITON_INTERPRET", "1")

from numerics import rel_err
from tnl import ops
from tnl.ops import linear_ce, lm_head_loss
from tnl.ops import loss as tloss
from tnl.ops import triton_backend as tb

pytestmark = pytest.mark.usefixtures("poison_empty")

# relative Frobenius error of the gradients vs float64; the loss is compared absolutely (it is O(log V))
# fp16: logits and dlogits are rounded to fp16 (one ulp 1e-3 relative) before each product. Worst of 6 seeds at
# (50, 24, 1000): grads fp32 3.3e-7, fp16 4.3e-4; loss fp32 1e-6, fp16 1e-4 (absolute)
GRAD_TOL = {torch.float32: 2e-6, torch.float16: 2e-3}
LOSS_TOL = {torch.float32: 2e-5, torch.float16: 1e-3}


def interp_or_skip():
    if "compiled" in tb.kernel_modes():
        pytest.skip("triton was imported compiled in this process (CUDA machine): interpreter tests run on CPU")


@pytest.fixture
def triton_backend(monkeypatch):
    """The Triton backend on CPU tensors (Triton's interpreter), the fused loss on auto, no environment override."""
    interp_or_skip()
    for var in ("TNL_KERNEL_BACKEND", "TNL_FUSED_CE", "TNL_LA2_ALGO"):
        monkeypatch.delenv(var, raising=False)
    with ops.using(backend="triton", fused_loss="auto"):
        yield


def make(N, D, V, dtype, seed, ignore=(), wscale=0.5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) * wscale / D ** 0.5 * 4).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    for i in ignore:
        t[i] = -100
    return h, w, t


def reference(h, w, t):
    """loss, d hidden, d weight in float64 with plain F.cross_entropy."""
    hd, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss = F.cross_entropy(hd @ wd.T, t, ignore_index=-100)
    loss.backward()
    return loss.detach(), hd.grad, wd.grad


def run(fn, h, w, t, chunk):
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(hl, wl, t, chunk)
    loss.backward()
    return loss.detach(), hl.grad, wl.grad


def check(got, want, dtype):
    loss, dh, dw = got
    rloss, rdh, rdw = want
    assert loss.dtype == torch.float32 and dh.dtype == dtype and dw.dtype == dtype
    assert abs(loss.double() - rloss).item() < LOSS_TOL[dtype], (loss.item(), rloss.item())
    assert rel_err(dh, rdh) < GRAD_TOL[dtype], rel_err(dh, rdh)
    assert rel_err(dw, rdw) < GRAD_TOL[dtype], rel_err(dw, rdw)


# ---------------------------------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("V,block", [(1000, None), (1000, 128), (1, None), (257, 64)])
def test_kernel_rows_and_inplace_gradient(dtype, V, block):
    interp_or_skip()
    import tnl_kernels

    seed = 11 + V + (block or 0)
    g = torch.Generator().manual_seed(seed)
    rows = 13
    # a strided (rows, V) view: the kernel must honour the row stride and leave the padding alone
    buf = (torch.randn(rows, V + 5, generator=g) * 3).to(dtype)
    x = buf[:, :V]
    x0, pad = x.double().clone(), buf[:, V:].clone()
    t = torch.randint(0, V, (rows,), generator=g)
    t[[2, 7]] = -100
    scale = 0.37
    losses = tnl_kernels.ce_grad_inplace(x, t, scale, ignore_index=-100, block=block)
    assert torch.equal(buf[:, V:], pad)
    keep = t != -100
    lse = torch.logsumexp(x0, dim=1)
    want_loss = torch.where(keep, lse - x0.gather(1, t.clamp(min=0)[:, None])[:, 0], 0.0)
    want_grad = (torch.softmax(x0, 1) - F.one_hot(t.clamp(min=0), V).double()) * scale * keep[:, None]
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert losses.dtype == torch.float32 and torch.allclose(losses.double(), want_loss, atol=tol * 10, rtol=0)
    assert torch.allclose(x.double(), want_grad, atol=tol, rtol=0)
    assert torch.count_nonzero(x[~keep]) == 0


def test_kernel_invalid_target_gives_nan_not_garbage():
    interp_or_skip()
    import tnl_kernels

    x = torch.randn(4, 50)
    t = torch.tensor([3, 50, -1, -100])
    losses = tnl_kernels.ce_grad_inplace(x, t, ignore_index=-100)
    assert torch.isfinite(losses[0]) and losses[1].isnan() and losses[2].isnan() and losses[3] == 0
    assert torch.isfinite(x[0]).all() and x[1].isnan().all() and x[2].isnan().all() and (x[3] == 0).all()


def test_kernel_rejects_bad_arguments():
    interp_or_skip()
    import tnl_kernels

    with pytest.raises(ValueError, match="unit stride"):
        tnl_kernels.ce_grad_inplace(torch.randn(8, 4).T, torch.zeros(4, dtype=torch.long), ignore_index=-100)
    with pytest.raises(TypeError, match="float64"):
        tnl_kernels.ce_grad_inplace(torch.randn(4, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long),
                                    ignore_index=-100)
    with pytest.raises(ValueError, match="targets"):
        tnl_kernels.ce_grad_inplace(torch.randn(4, 8), torch.zeros(3, dtype=torch.long), ignore_index=-100)


# ---------------------------------------------------------------------------------------------- the fused function
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N,D,V,chunk,ignore", [
    (50, 24, 1000, 16, [3, 17, 49]),         # 4 chunks, the last one partial
    (50, 24, 1000, 7, list(range(7, 14))),   # chunk 7 does not divide 50; the second chunk wholly ignored
    (1, 8, 1000, 4096, []),                  # a single row, chunk larger than N
    (33, 40, 97, 33, [0]),                   # one chunk, small prime V
])
def test_fused_matches_float64_reference(triton_backend, dtype, N, D, V, chunk, ignore):
    h, w, t = make(N, D, V, dtype, seed=N * 7 + chunk + D, ignore=ignore)
    got = run(tloss.fused_linear_cross_entropy, h, w, t, chunk)
    check(got, reference(h, w, t), dtype)


def test_lm_head_loss_takes_the_fused_path_on_triton(triton_backend, monkeypatch):
    h, w, t = make(3 * 11, 16, 1000, torch.float32, seed=5, ignore=[4])
    calls = []
    real = tloss._FusedLinearCE.apply
    monkeypatch.setattr(tloss._FusedLinearCE, "apply", lambda *a: calls.append(1) or real(*a))
    got = run(lambda hh, ww, tt, c: lm_head_loss(hh.view(3, 11, 16), ww, tt.view(3, 11), c), h, w, t, 8)
    assert calls == [1]
    check(got, reference(h, w, t), torch.float32)


@pytest.mark.parametrize("how", ["no_grad", "env_off", "setting_off", "torch_backend", "float64"])
def test_lm_head_loss_keeps_the_torch_path(triton_backend, monkeypatch, how):
    dtype = torch.float64 if how == "float64" else torch.float32
    h, w, t = make(20, 12, 1000, dtype, seed=6, ignore=[1])
    monkeypatch.setattr(tloss._FusedLinearCE, "apply", lambda *a: pytest.fail("fused path taken"))
    if how == "env_off":
        monkeypatch.setenv("TNL_FUSED_CE", "0")
    rloss, rdh, rdw = reference(h, w, t)
    if how == "no_grad":
        with torch.no_grad():
            loss = lm_head_loss(h, w, t, 8)
        assert abs(loss.double() - rloss).item() < 1e-5
        return
    changes = {"setting_off": {"fused_loss": "off"}, "torch_backend": {"backend": "torch"}}.get(how, {})
    with ops.using(**changes):
        got = run(lm_head_loss, h, w, t, 8)
    assert abs(got[0].double() - rloss).item() < 1e-5
    assert rel_err(got[1], rdh) < 1e-5 and rel_err(got[2], rdw) < 1e-5


def test_zero3_root_module_keeps_the_torch_path(monkeypatch):
    """The engine's ZeRO-3 wrapper (LossOnly) runs the model with fused_loss off; plain models keep the setting."""
    from tnl.models import build_model
    from tnl.train.engine import LossOnly

    monkeypatch.delenv("TNL_FUSED_CE", raising=False)
    seen = []
    monkeypatch.setattr(tloss, "use_fused_ce", lambda h, w: seen.append(ops.settings().fused_loss) or False)
    model = build_model(dict(arch="tnl", vocab_size=61, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=40))
    ids = torch.randint(0, 61, (1, 9))
    model(ids, ids)
    LossOnly(model)(ids, ids)
    assert seen == ["auto", "off"] and ops.settings().fused_loss == "auto"


def test_fused_loss_setting_env_override_and_typos(monkeypatch, caplog):
    """configure() sets the mode; TNL_FUSED_CE (also 1/0) overrides it, is logged once and reported in settings();
    a bad value in either is one ValueError naming where it came from."""
    monkeypatch.delenv("TNL_FUSED_CE", raising=False)
    assert ops.settings().fused_loss == "auto"  # on by default since its H100 check
    with ops.using(fused_loss="off"):
        assert ops.settings().fused_loss == "off" and ops.settings().overrides == {}
        monkeypatch.setenv("TNL_FUSED_CE", "1")
        with caplog.at_level("WARNING", logger="tnl.ops"):
            assert ops.settings().fused_loss == "on"
            assert ops.settings().overrides == {"fused_loss": "TNL_FUSED_CE=1"}
        assert sum("TNL_FUSED_CE=1" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("TNL_FUSED_CE", "off")
    assert ops.settings().fused_loss == "off"
    monkeypatch.setenv("TNL_FUSED_CE", "fused")
    with pytest.raises(ValueError, match="TNL_FUSED_CE"):
        ops.settings()
    monkeypatch.delenv("TNL_FUSED_CE")
    with pytest.raises(ValueError, match="fused_loss"):
        ops.configure(fused_loss="yes please")
    assert ops.settings().fused_loss == "auto"


def test_fused_loss_on_forces_the_kernel_and_off_the_torch_path(monkeypatch):
    """on: the fused kernel even where the backend is torch (here: interpreted on CPU); off: never."""
    interp_or_skip()
    for var in ("TNL_KERNEL_BACKEND", "TNL_FUSED_CE"):
        monkeypatch.delenv(var, raising=False)
    h, w, t = make(13, 8, 50, torch.float32, seed=21)
    h.requires_grad_()
    with ops.using(backend="torch", fused_loss="on"):
        assert tloss.use_fused_ce(h, w)
    with ops.using(backend="triton", fused_loss="off"):
        assert not tloss.use_fused_ce(h, w)
    with ops.using(backend="torch", fused_loss="auto"):
        assert not tloss.use_fused_ce(h, w)


@pytest.mark.parametrize("fused", [True, False])
def test_all_targets_ignored_gives_zero_loss_and_zero_grads(triton_backend, monkeypatch, fused):
    h, w, t = make(9, 8, 100, torch.float32, seed=7, ignore=range(9))
    with ops.using(fused_loss="auto" if fused else "off"):
        loss, dh, dw = run(lm_head_loss, h, w, t, 4)
    assert loss.item() == 0.0 and torch.count_nonzero(dh) == 0 and torch.count_nonzero(dw) == 0


@pytest.mark.parametrize("fused", [True, False])
def test_tied_weight_gets_the_sum_of_both_gradients(triton_backend, monkeypatch, fused):
    """The LM head shares its weight with the embedding (TNL ties them): d weight = d embed + d head."""
    if not fused:
        ops.configure(fused_loss="off")  # restored by the fixture
    g = torch.Generator().manual_seed(8)
    V, D, N = 300, 16, 29
    ids = torch.randint(0, V, (N,), generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[5] = -100
    w0 = torch.randn(V, D, generator=g) * 0.3
    mix = torch.randn(D, D, generator=g) / D ** 0.5

    def forward(w, lossfn):
        h = torch.tanh(F.embedding(ids, w) @ mix)
        return lossfn(h, w, t)

    w = w0.clone().requires_grad_()
    loss = forward(w, lambda h, w, t: lm_head_loss(h, w, t, 8))
    loss.backward()
    wd = w0.double().requires_grad_()
    mix = mix.double()
    ref = forward(wd, lambda h, w, t: F.cross_entropy(h @ w.T, t, ignore_index=-100))
    ref.backward()
    assert abs(loss.double() - ref).item() < 2e-5
    assert rel_err(w.grad, wd.grad) < 2e-6
    # both uses contribute: the embedding rows of `ids` differ from the head-only gradient
    head_only = torch.autograd.grad(F.cross_entropy(torch.tanh(F.embedding(ids, wd) @ mix).detach() @ wd.T, t,
                                                    ignore_index=-100), wd)[0]
    assert rel_err(head_only, wd.grad) > 1e-3


@pytest.mark.parametrize("arch", ["tnl", "llama"])
def test_model_gradients_equal_with_fused_and_torch_loss(monkeypatch, arch):
    """A tiny model (TNL ties its LM head to the embedding): every parameter's gradient is the same whichever path
    lm_head_loss takes. Only the loss is switched to the fused path; the rest of the model stays on torch."""
    interp_or_skip()
    from tnl.models import build_model

    torch.manual_seed(14)
    model = build_model(dict(arch=arch, vocab_size=301, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=40, loss_chunk_size=7))
    ids = torch.randint(0, 301, (2, 13))
    targets = torch.randint(0, 301, (2, 13))
    targets[1, :9] = -100

    def grads(fused):
        model.zero_grad(set_to_none=True)
        with ops.using(fused_loss="on" if fused else "off"):
            loss = model(ids, targets).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (l_t, g_t), (l_f, g_f) = grads(False), grads(True)
    assert abs(l_t - l_f).item() < 1e-5
    assert g_t.keys() == g_f.keys()
    for name in g_t:
        assert rel_err(g_f[name], g_t[name]) < 1e-5, name


def test_inside_torch_compile_is_one_custom_op(triton_backend, monkeypatch):
    """Under torch.compile the fused loss is one custom op of the graph (tnl.ops.custom_ops), forward and backward: the
    whole function compiles without a graph break (fullgraph) through AOTAutograd, and gives the eager numbers."""
    h, w, t = make(2 * 25, 16, 300, torch.float32, seed=15, ignore=[3])
    calls, compiled = [], [True]
    real, real_apply = linear_ce.fused_forward, tloss._FusedLinearCE.apply
    monkeypatch.setattr(linear_ce, "fused_forward", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(tloss._FusedLinearCE, "apply",
                        lambda *a: pytest.fail("autograd Function under compile") if compiled[0] else real_apply(*a))

    def f(hh, ww, tt, c):
        return lm_head_loss(torch.tanh(hh).view(2, 25, 16), ww, tt.view(2, 25), c) * 2

    dynamo = importlib.import_module("torch._dynamo")
    dynamo.reset()
    got = run(torch.compile(f, backend="aot_eager", fullgraph=True), h, w, t, 8)
    compiled[0] = False
    want = run(f, h, w, t, 8)
    dynamo.reset()
    assert calls == [1, 1]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_custom_op_passes_opcheck(triton_backend):
    """torch.library.opcheck: schema, fake (shape) implementation, autograd registration and AOT dispatch."""
    h, w, t = make(37, 16, 300, torch.float32, seed=16, ignore=[0, 5])
    from tnl.ops import custom_ops

    for need_h, need_w in ((True, True), (True, False), (False, True)):
        args = (h.clone().requires_grad_(need_h), w.clone().requires_grad_(need_w), t, 8, torch.float32, need_h,
                need_w)
        torch.library.opcheck(custom_ops._fused_ce, args, atol=1e-5, rtol=1e-5)


def test_autocast_fp16_computes_in_fp16_and_returns_fp32_grads(triton_backend):
    """Under autocast fp32 master copies are cast like F.linear would; gradients come back fp32."""
    h, w, t = make(40, 16, 1000, torch.float32, seed=9, ignore=[0, 39])
    with torch.autocast("cpu", dtype=torch.float16):
        assert tloss.compute_dtype(h, w) == torch.float16
        loss, dh, dw = run(tloss.fused_linear_cross_entropy, h, w, t, 16)
    assert dh.dtype == torch.float32 and dw.dtype == torch.float32
    want = reference(h.half().float(), w.half().float(), t)  # the fp16-rounded operands, exactly
    assert abs(loss.double() - want[0]).item() < LOSS_TOL[torch.float16]
    assert rel_err(dh, want[1]) < GRAD_TOL[torch.float16] and rel_err(dw, want[2]) < GRAD_TOL[torch.float16]


def test_only_requested_gradients_and_grad_output_scaling(triton_backend):
    h, w, t = make(21, 8, 200, torch.float32, seed=10, ignore=[2])
    wl = w.clone().requires_grad_()
    loss = tloss.fused_linear_cross_entropy(h, wl, t, 5)  # hidden needs no gradient
    (loss * 3.0).backward()
    assert rel_err(wl.grad, reference(h, w, t)[2] * 3.0) < GRAD_TOL[torch.float32]


def test_fp16_small_gradients_survive_a_loss_scale(triton_backend):
    """fp16 training multiplies the loss by a scale so that small gradients do not underflow; the fused path applies
    that scale (and 1/count) only in backward, so it keeps fp16 gradients in fp32 until then. Here d hidden ~ 1e-6
    (an fp16 subnormal: ~5% rounding) unless it waits in fp32."""
    h, w, t = make(40, 8, 200, torch.float16, seed=13, wscale=1e-4)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    (tloss.fused_linear_cross_entropy(hl, wl, t, 16) * 1024.0).backward()
    want = reference(h, w, t)
    assert hl.grad.abs().max() > 1e-4  # scaled into fp16's normal range
    assert rel_err(hl.grad.double() / 1024, want[1]) < GRAD_TOL[torch.float16]
    assert rel_err(wl.grad.double() / 1024, want[2]) < GRAD_TOL[torch.float16]


@pytest.mark.parametrize("bad,err,match", [
    (dict(t=torch.zeros(7, dtype=torch.long)), ValueError, "targets must have shape"),
    (dict(t=torch.zeros(9)), TypeError, "int64"),
    (dict(w=torch.randn(10, 5)), ValueError, "D = 8"),
    (dict(w=torch.randn(10, 8, dtype=torch.float16)), TypeError, "weight dtype"),
    (dict(h=torch.randn(9, 8, dtype=torch.float64), w=torch.randn(10, 8, dtype=torch.float64)), TypeError, "float64"),
    (dict(chunk=0), ValueError, "chunk_size"),
    (dict(h=torch.randn(3, 3, 8)), ValueError, r"\(N, D\)"),
])
def test_fused_rejects_bad_arguments(triton_backend, bad, err, match):
    args = dict(h=torch.randn(9, 8), w=torch.randn(10, 8), t=torch.zeros(9, dtype=torch.long), chunk=4)
    args.update(bad)
    with pytest.raises(err, match=match):
        tloss.fused_linear_cross_entropy(args["h"], args["w"], args["t"], args["chunk"])


# --------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [False, True])
def test_gpu_bf16_at_model_size_against_fp32(autocast, monkeypatch):
    """tnl_385m's head at 8K tokens: bf16 (or fp32 masters under bf16 autocast) vs an fp32 reference on the GPU."""
    N, D, V, chunk = 8192, 1024, 64000, 4096
    g = torch.Generator(device="cuda").manual_seed(12)
    h = torch.randn(N, D, device="cuda", generator=g)
    w = torch.randn(V, D, device="cuda", generator=g) * 0.02
    t = torch.randint(0, V, (N,), device="cuda", generator=g)
    t[: chunk] = torch.where(torch.rand(chunk, device="cuda", generator=g) < 0.1, -100, t[: chunk])
    dtype = torch.float32 if autocast else torch.bfloat16
    hl, wl = (x.to(dtype).clone().requires_grad_() for x in (h, w))  # (to() is a no-op for fp32: keep h a leaf)
    monkeypatch.delenv("TNL_FUSED_CE", raising=False)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        assert tloss.use_fused_ce(hl, wl)  # what lm_head_loss takes on CUDA when training
        loss = tloss.fused_linear_cross_entropy(hl, wl, t, chunk)
    loss.backward()
    assert hl.grad.dtype == dtype and wl.grad.dtype == dtype
    # fp32 truth on the bf16-rounded operands, chunked to bound memory
    hr, wr = (x.detach().bfloat16().float().requires_grad_() for x in (h, w))
    ref = lm_head_loss_fp32(hr, wr, t, chunk)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 2e-3 * max(1.0, ref.item())
    assert rel_err(hl.grad, hr.grad) < 1e-2, rel_err(hl.grad, hr.grad)  # bf16 dlogits: ~4e-3 expected
    assert rel_err(wl.grad, wr.grad) < 1e-2, rel_err(wl.grad, wr.grad)


def lm_head_loss_fp32(h, w, t, chunk):
    total = h.new_zeros(())
    for s in range(0, h.shape[0], chunk):
        total = total + F.cross_entropy(h[s:s + chunk] @ w.T, t[s:s + chunk], ignore_index=-100, reduction="sum")
    return total / (t != -100).sum().clamp(min=1)
