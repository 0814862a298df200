"""Lightning Attention-2 forward and backward as two plain functions (no autograd), for torch.library custom ops.

`lightning_attn_triton` wraps the kernels in an autograd Function; a torch.library custom op needs the two halves
separately (its backward is a second op that torch.compile sees as one node). Both halves cut D and E into parts
of at most DMAX / EMAX exactly as `lightning_attn_triton` does, so the forward is that function under no_grad and
the backward is the chain rule through its splits:
- value parts (E > EMAX): o = cat_j o_j(q, k, v_j), so dv = cat_j dv_j and dq, dk = sum_j dq_j, dk_j;
- key parts (D > DMAX): o = sum_i o_i(q_i, k_i, v), so dq, dk = cat_i dq_i, dk_i and dv = sum_i dv_i.
Sums of parts are taken in fp32 and rounded once. The backward recomputes the forward's segment states where it
needs them (the autograd Function keeps them from its forward): one segment-sum pass, at most ~0.1 ms per call at
the benchmarks' shapes, and only where the walk is cut into segments (few (sequence, head) pairs).
"""

import torch
import triton

from .lightning_attn import _backward, _backward_fused, _Plan, lightning_attn_triton


def lightning_attn_forward(q, k, v, slope=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                           config=None):
    """(o, final state or None) of `lightning_attn_triton`, no autograd graph recorded."""
    with torch.no_grad():
        return lightning_attn_triton(q, k, v, slope, initial_state, output_final_state, cu_seqlens, config=config)


def _core_backward(q, k, v, slope, h0, cu_seqlens, do, dht, need_dh0, config):
    plan = _Plan(q, v, cu_seqlens, config, k)
    if plan.cfg["bwd"]["ALGO"] == "fused":
        return _backward_fused(plan, q, k, v, slope, h0, do, dht, need_dh0, None)
    return _backward(plan, q, k, v, slope, h0, do, dht, cu_seqlens, need_dh0)


def _sum_parts(parts, dtype):
    if len(parts) == 1:
        return parts[0]
    total = parts[0].float()
    for p in parts[1:]:
        total = total + p.float()
    return total.to(dtype)


def _split(x, part, dim, n):
    return [None] * n if x is None else [t.contiguous() for t in x.split(part, dim=dim)]


def _key_parts_backward(q, k, v, slope, h0, cu_seqlens, do, dht, need_dh0, config):
    D = q.shape[-1]
    dmax = (config or {}).get("DMAX", 128)
    if D <= dmax:
        return _core_backward(q, k, v, slope, h0, cu_seqlens, do, dht, need_dh0, config)
    part = triton.cdiv(D, triton.cdiv(D, dmax))
    n = triton.cdiv(D, part)
    outs = [_core_backward(qi, ki, v, slope, h0i, cu_seqlens, do, dhti, need_dh0, config)
            for qi, ki, h0i, dhti in zip(q.split(part, dim=-1), k.split(part, dim=-1), _split(h0, part, 2, n),
                                         _split(dht, part, 2, n))]
    dq = torch.cat([o[0] for o in outs], dim=-1)
    dk = torch.cat([o[1] for o in outs], dim=-1)
    dv = _sum_parts([o[2] for o in outs], v.dtype)
    dh0 = torch.cat([o[3] for o in outs], dim=2) if need_dh0 else None
    return dq, dk, dv, dh0


def lightning_attn_backward(q, k, v, slope, initial_state, cu_seqlens, do, dht=None, need_dh0=False, config=None):
    """Gradients (dq, dk, dv, dh0 or None) of `lightning_attn_triton`'s outputs (o, final state) given their
    gradients do (v's shape) and dht ((N, H, D, E) fp32, or None for none). Inputs as validated by tnl.ops."""
    if slope is not None:
        slope = slope.float().contiguous()
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    if do.stride(-1) != 1:
        do = do.contiguous()
    if dht is not None:
        dht = dht.float().contiguous()
    need_dh0 = bool(need_dh0) and initial_state is not None
    E = v.shape[-1]
    emax = (config or {}).get("EMAX", 128)
    if E <= emax:
        return _key_parts_backward(q, k, v, slope, initial_state, cu_seqlens, do, dht, need_dh0, config)
    part = triton.cdiv(E, triton.cdiv(E, emax))
    n = triton.cdiv(E, part)
    outs = [_key_parts_backward(q, k, vj, slope, h0j, cu_seqlens, doj.contiguous(), dhtj, need_dh0, config)
            for vj, doj, h0j, dhtj in zip(v.split(part, dim=-1), do.split(part, dim=-1),
                                          _split(initial_state, part, 3, n), _split(dht, part, 3, n))]
    dq = _sum_parts([o[0] for o in outs], q.dtype)
    dk = _sum_parts([o[1] for o in outs], k.dtype)
    dv = torch.cat([o[2] for o in outs], dim=-1)
    dh0 = torch.cat([o[3] for o in outs], dim=3) if need_dh0 else None
    return dq, dk, dv, dh0
