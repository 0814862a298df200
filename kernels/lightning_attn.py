"""Host side of Lightning Attention-2: launches the chunked kernels and wraps them in an autograd Function.

Inputs are validated by tnl.ops (Contract 1); this module only checks what the kernels themselves need.
Forward: state pass (sequential over chunks, parallel over sequence x head x D-tile x E-tile) then output pass
(parallel over chunks). Backward recomputes the chunk states instead of keeping them (memory), runs the reverse
state-gradient pass, then the parallel dq/dk/dv pass.
"""

import torch
import triton

from .la2_bwd import la2_bwd_dqkv_kernel, la2_bwd_dstate_kernel
from .la2_fwd import la2_fwd_out_kernel, la2_fwd_state_kernel


def _config(D: int, E: int) -> dict:
    """Block sizes per head-dim class. BT is the chunk length (also the state-snapshot interval)."""
    BD = max(16, triton.next_power_of_2(D))
    bt = 64 if BD <= 128 else 32
    return dict(
        BT=bt,
        BD=BD,
        BK=min(64, BD),  # D tile of the state passes and of the output pass
        BV=min(64, max(16, triton.next_power_of_2(E))),  # E tile
    )


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (tl.dot would use tf32 otherwise); bf16/fp16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def _chunk_tables(cu_seqlens: torch.Tensor, BT: int):
    """(chunk_offsets (N,) int32: first chunk of each sequence, chunk_indices (C, 2) int32: (sequence, chunk))."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nchunks = (lens + BT - 1) // BT
    offsets = torch.zeros_like(nchunks)
    offsets[1:] = torch.cumsum(nchunks, 0)[:-1]
    total = int(nchunks.sum().item())
    seq = torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), nchunks, output_size=total)
    local = torch.arange(total, device=cu_seqlens.device) - offsets[seq]
    indices = torch.stack([seq, local], 1).to(torch.int32).contiguous()
    return offsets.to(torch.int32), indices, total


def _strides(x: torch.Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


class _Plan:
    """Shapes, block sizes and chunk tables of one call, shared by forward and backward."""

    def __init__(self, q, v, cu_seqlens):
        self.B, self.T, self.H, self.D = q.shape
        self.E = v.shape[-1]
        self.cfg = _config(self.D, self.E)
        BT = self.cfg["BT"]
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.N = cu_seqlens.numel() - 1
            self.offsets, self.indices, self.chunks = _chunk_tables(cu_seqlens, BT)
            self.grid_bh = self.H
        else:
            self.N = self.B
            self.offsets = self.indices = None
            self.chunks = self.B * triton.cdiv(self.T, BT)
            self.grid_bh = self.B * self.H
        self.chunks_per_row = self.chunks if self.varlen else triton.cdiv(self.T, BT)


def _state_pass(plan, k, v, slope, h0, store_h, store_ht, cu_seqlens, h_dtype):
    c = plan.cfg
    h = torch.empty((plan.chunks, plan.H, plan.D, plan.E), dtype=h_dtype, device=k.device) if store_h else None
    ht = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=k.device) if store_ht else None
    grid = (plan.N * plan.H, triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    la2_fwd_state_kernel[grid](
        k, v, h, h0, ht, slope, cu_seqlens, plan.offsets,
        *_strides(k), *_strides(v),
        plan.T, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"],
        HAS_DECAY=slope is not None, USE_H0=h0 is not None, STORE_HT=store_ht, STORE_H=store_h,
        IS_VARLEN=plan.varlen, PREC=_prec(k.dtype),
    )
    return h, ht


def _forward(plan, q, k, v, slope, h0, output_final_state, cu_seqlens):
    c = plan.cfg
    h, ht = _state_pass(plan, k, v, slope, h0, True, output_final_state, cu_seqlens, q.dtype)
    o = torch.empty((plan.B, plan.T, plan.H, plan.E), dtype=q.dtype, device=q.device)
    grid = (plan.chunks_per_row, triton.cdiv(plan.E, c["BV"]), plan.grid_bh)
    la2_fwd_out_kernel[grid](
        q, k, v, h, o, slope, cu_seqlens, plan.indices,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        plan.T, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"],
        HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype),
    )
    return o, ht


def _backward(plan, q, k, v, slope, h0, do, dht, cu_seqlens, need_dh0):
    c = plan.cfg
    h, _ = _state_pass(plan, k, v, slope, h0, True, False, cu_seqlens, q.dtype)
    dh = torch.empty((plan.chunks, plan.H, plan.D, plan.E), dtype=q.dtype, device=q.device)
    dh0 = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=q.device) if need_dh0 else None
    grid = (plan.N * plan.H, triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    la2_bwd_dstate_kernel[grid](
        q, do, dh, dht, dh0, slope, cu_seqlens, plan.offsets,
        *_strides(q), *_strides(do),
        plan.T, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"],
        HAS_DECAY=slope is not None, USE_DHT=dht is not None, STORE_DH0=need_dh0,
        IS_VARLEN=plan.varlen, PREC=_prec(q.dtype),
    )
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grid = (plan.chunks_per_row, 1, plan.grid_bh)
    la2_bwd_dqkv_kernel[grid](
        q, k, v, do, h, dh, dq, dk, dv, slope, cu_seqlens, plan.indices,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do),
        *_strides(dq), *_strides(dk), *_strides(dv),
        plan.T, plan.H, plan.D, plan.E, c["BT"], c["BD"], c["BV"],
        HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype),
        num_warps=8 if c["BD"] >= 128 else 4,
    )
    return dq, dk, dv, dh0


class LightningAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slope, initial_state, output_final_state, cu_seqlens):
        plan = _Plan(q, v, cu_seqlens)
        o, ht = _forward(plan, q, k, v, slope, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens)
        ctx.plan = plan
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, slope, h0, cu_seqlens = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        if do.stride(-1) != 1:
            do = do.contiguous()
        if dht is not None:
            dht = dht.float().contiguous()
        need_dh0 = h0 is not None and ctx.needs_input_grad[4]
        dq, dk, dv, dh0 = _backward(ctx.plan, q, k, v, slope, h0, do, dht, cu_seqlens, need_dh0)
        return dq, dk, dv, None, dh0, None, None


def lightning_attn_triton(q, k, v, slope=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Lightning Attention-2 (Contract 1 of DESIGN.md) through the Triton kernels.

    q, k: (B, T, H, D); v: (B, T, H, E); same dtype (bf16/fp16/fp32), unit stride on the last dim.
    slope: None (no decay) or float32 (H,) >= 0, decay lam_h = exp(-slope_h).
    initial_state: None or float32 (N, H, D, E), the true state before each sequence.
    cu_seqlens: None or int32 (N+1,) document offsets packed along T (B == 1); the state resets at each boundary.
    Returns (o with v's shape and q's dtype, final_state float32 (N, H, D, E) or None).
    Differentiable in q, k, v and initial_state. Expects inputs already validated by tnl.ops.
    """
    if slope is not None:
        slope = slope.float().contiguous()
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    return LightningAttnFunction.apply(q, k, v, slope, initial_state, bool(output_final_state), cu_seqlens)
