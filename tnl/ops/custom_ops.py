"""Lightning Attention-2 and the fused LM-head loss as torch.library custom ops: what torch.compile sees of them.

Under torch.compile, `tnl.ops.lightning_attn` and `tnl.ops.fused_linear_cross_entropy` call these ops instead of
their autograd Functions. Each op is one opaque node with a fake (shape-only) implementation and a registered
backward that is itself an op, so dynamo never traces the host code (validation, block-size tables, launches),
one graph spans a whole block, forward and backward, and inductor fuses the elementwise work around the ops:
SiLU on q and k, the LRPE rotation, SRMSNorm and the u gate, the SGLU product, the residual adds and casts.
(SRMSNorm is no op here: under compile `tnl.ops.srms_norm` is its plain formula, which inductor fuses with those
neighbours; an opaque norm would block exactly that fusion.) Eager calls keep the autograd Functions, which cost
less Python per call and keep the forward's segment states for the backward.

The implementations run the backend in force, as the eager ops do (tnl.ops.settings.backend):
- lightning_attn: Triton (`tnl_kernels.lightning_attn_forward` / `_backward`), or the chunked torch reference
  (its backward: three reference forwards, see _la2_torch_backward);
- fused_linear_ce: always the Triton kernel (interpreted on CPU tensors), as `fused_linear_cross_entropy`.
Outputs that a call does not produce (the final state, dh0, a gradient not asked for) are empty (0,) tensors:
custom ops return tensors, not None.

Namespace: `tnl` for this module (tnl.ops.custom_ops); the copy that an HF export bundles (imported under another
module name) registers under a namespace derived from its own name, so two copies in one process never collide.
"""

import re
from typing import Optional

import torch
from torch import Tensor

from tnl import reference
from tnl.ops import linear_ce, settings, triton_backend

NAMESPACE = "tnl" if __name__ == "tnl.ops.custom_ops" else "tnl_" + re.sub(r"\W", "_", __name__)


def _empty(like: Tensor, dtype=torch.float32) -> Tensor:
    return like.new_empty((0,), dtype=dtype)


# --------------------------------------------------------------------------------------------- Lightning Attention-2
@torch.library.custom_op(f"{NAMESPACE}::lightning_attn", mutates_args=())
def _la2(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor], initial_state: Optional[Tensor],
         cu_seqlens: Optional[Tensor], output_final_state: bool) -> tuple[Tensor, Tensor]:
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))  # the kernels' one layout need
    if settings.backend(q.device) == "triton":
        fn = triton_backend.triton_fn("lightning_attn_forward", q.device)
        o, ht = fn(q, k, v, slope, initial_state, output_final_state, cu_seqlens)
    else:
        with torch.no_grad():
            o, ht = reference.lightning_attn_chunked(q, k, v, slope, initial_state, cu_seqlens)
    ht = ht.float().contiguous() if output_final_state else _empty(q)
    return o.contiguous(), ht


@_la2.register_fake
def _la2_fake(q, k, v, slope, initial_state, cu_seqlens, output_final_state):
    B, T, H, D = q.shape
    E = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = q.new_empty((N, H, D, E), dtype=torch.float32) if output_final_state else _empty(q)
    return q.new_empty((B, T, H, E)), ht


@torch.library.custom_op(f"{NAMESPACE}::lightning_attn_backward", mutates_args=())
def _la2_bwd(q: Tensor, k: Tensor, v: Tensor, slope: Optional[Tensor], initial_state: Optional[Tensor],
             cu_seqlens: Optional[Tensor], do: Tensor, dht: Optional[Tensor],
             need_dh0: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    need_dh0 = need_dh0 and initial_state is not None
    if settings.backend(q.device) == "triton":
        fn = triton_backend.triton_fn("lightning_attn_backward", q.device)
        dq, dk, dv, dh0 = fn(q, k, v, slope, initial_state, cu_seqlens, do, dht, need_dh0)
    else:
        dq, dk, dv, dh0 = _la2_torch_backward(q, k, v, slope, initial_state, cu_seqlens, do, dht, need_dh0)
    dh0 = dh0.float().contiguous() if need_dh0 else _empty(q)
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dh0


def _la2_torch_backward(q, k, v, slope, h0, cu_seqlens, do, dht, need_dh0):
    """The torch backend's gradients, from the chunked reference run forward three times (a custom op's kernels
    run below autograd, so none can be recorded here). With S_t = sum_{s<=t} lam^(t-s) k_s^T v_s (+ lam^(t+1) S_0)
    and G_s = sum_{t>=s} lam^(t-s) q_t^T do_t (+ lam^(n-1-s) dht, n the document's length):
        dq_t = do_t S_t^T    an LA forward over (do, v, k) from S_0^T;
        dv_s = k_s G_s       an LA forward over the reversed documents, (k, q, do); likewise
        dk_s = v_s G_s^T     over (v, do, q); the dht terms are added per token;
        dS_0 = lam G_0       lam times the reversed walk's final state, + lam^n dht."""
    la = reference.lightning_attn_chunked
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, T, H, _ = q.shape
    qf, kf, vf, dof = (x.to(dt) for x in (q, k, v, do))
    dq, _ = la(dof, vf, kf, slope, None if h0 is None else h0.to(dt).transpose(-1, -2), cu_seqlens)
    rev = None if cu_seqlens is None else (T - cu_seqlens.flip(0)).to(torch.int32)  # documents reversed in place
    qr, kr, vr, dor = (x.flip(1) for x in (qf, kf, vf, dof))
    dv, g0 = la(kr, qr, dor, slope, None, rev)
    dk, _ = la(vr, dor, qr, slope, None, rev)
    dv, dk = dv.flip(1), dk.flip(1)
    rate = torch.zeros(H, dtype=dt, device=q.device) if slope is None else slope.to(dt)
    bounds = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    rows = [(b, 0, T, b) for b in range(B)] if cu_seqlens is None else \
        [(0, s, e, n) for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))]
    if dht is not None:
        dht = dht.to(dt)
        for b, s, e, n in rows:  # lam^(distance to the document's last token) times the final-state gradient
            dist = torch.arange(e - s - 1, -1, -1, device=q.device, dtype=dt)
            w = torch.exp(-dist[:, None] * rate)[..., None]  # (n, H, 1)
            dk[b, s:e] += w * torch.einsum("hde,the->thd", dht[n], vf[b, s:e])
            dv[b, s:e] += w * torch.einsum("hde,thd->the", dht[n], kf[b, s:e])
    dh0 = None
    if need_dh0:
        if cu_seqlens is not None:
            g0 = g0.flip(0)  # the reversed row walks its documents last to first
        lam = torch.exp(-rate)[None, :, None, None]
        dh0 = lam * g0
        if dht is not None:
            lens = torch.tensor([e - s for _, s, e, _ in rows], device=q.device, dtype=dt)
            dh0 = dh0 + torch.exp(-lens[:, None] * rate)[..., None, None] * dht
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dh0


@_la2_bwd.register_fake
def _la2_bwd_fake(q, k, v, slope, initial_state, cu_seqlens, do, dht, need_dh0):
    dh0 = torch.empty_like(initial_state, memory_format=torch.contiguous_format) \
        if need_dh0 and initial_state is not None else _empty(q)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dh0


def _la2_setup(ctx, inputs, output):
    q, k, v, slope, initial_state, cu_seqlens, _ = inputs
    ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens)


def _la2_backward(ctx, do, dht):
    q, k, v, slope, initial_state, cu_seqlens = ctx.saved_tensors
    need_dh0 = initial_state is not None and ctx.needs_input_grad[4]
    if do is None:
        do = torch.zeros_like(v)
    if dht is not None and dht.numel() == 0:
        dht = None
    dq, dk, dv, dh0 = _la2_bwd(q, k, v, slope, initial_state, cu_seqlens, do, dht, need_dh0)
    return dq, dk, dv, None, (dh0 if need_dh0 else None), None, None


_la2.register_autograd(_la2_backward, setup_context=_la2_setup)


def saved_op():
    """The LA2 op's overload, for activation-checkpoint policies that keep its outputs (tnl.models.common)."""
    return _la2._opoverload


def lightning_attn(q, k, v, slope, initial_state, output_final_state, cu_seqlens):
    """The op behind tnl.ops.lightning_attn (arguments validated there): (o, final state or None)."""
    o, ht = _la2(q, k, v, slope, initial_state, cu_seqlens, bool(output_final_state))
    return o, (ht if output_final_state else None)


# ------------------------------------------------------------------------------------- fused linear + cross-entropy
@torch.library.custom_op(f"{NAMESPACE}::fused_linear_ce", mutates_args=())
def _fused_ce(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, cdtype: torch.dtype,
              need_hidden: bool, need_weight: bool) -> tuple[Tensor, Tensor, Tensor]:
    kernel = linear_ce.ce_kernel(hidden.device)
    loss, dh, dw = linear_ce.fused_forward(hidden, weight, targets, chunk_size, cdtype, kernel, need_hidden,
                                       need_weight)
    return loss, (dh if need_hidden else _empty(hidden)), (dw if need_weight else _empty(hidden))


@_fused_ce.register_fake
def _fused_ce_fake(hidden, weight, targets, chunk_size, cdtype, need_hidden, need_weight):
    dh = hidden.new_empty(hidden.shape, dtype=linear_ce.kept_dtype(hidden.dtype)) if need_hidden else _empty(hidden)
    dw = weight.new_empty(weight.shape, dtype=linear_ce.kept_dtype(weight.dtype)) if need_weight else _empty(hidden)
    return hidden.new_empty((), dtype=torch.float32), dh, dw


def _fused_ce_setup(ctx, inputs, output):
    hidden, weight, _, _, _, need_hidden, need_weight = inputs
    _, dh, dw = output
    ctx.save_for_backward(dh, dw)
    ctx.dtypes, ctx.need = (hidden.dtype, weight.dtype), (need_hidden, need_weight)


def _fused_ce_backward(ctx, grad_loss, _grad_dh, _grad_dw):
    dh, dw = ctx.saved_tensors
    gh, gw = linear_ce.scale_saved_grads(dh if ctx.need[0] else None, dw if ctx.need[1] else None, grad_loss,
                                         ctx.dtypes)
    return gh, gw, None, None, None, None, None


_fused_ce.register_autograd(_fused_ce_backward, setup_context=_fused_ce_setup)


def fused_linear_ce(hidden, weight, targets, chunk_size, cdtype):
    """The op behind tnl.ops.fused_linear_cross_entropy under torch.compile (arguments checked there)."""
    loss, _, _ = _fused_ce(hidden, weight, targets, chunk_size, cdtype, hidden.requires_grad,
                           weight.requires_grad)
    return loss
