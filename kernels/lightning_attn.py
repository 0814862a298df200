"""Host side of Lightning Attention-2: launches the chunked kernels and wraps them in an autograd Function.

Inputs are validated by tnl.ops (Contract 1); this module only checks what the kernels themselves need.
Forward: state pass (sequential over chunks, parallel over sequence x head x D-tile x E-tile) then output pass
(parallel over chunks). Backward recomputes the chunk states instead of keeping them (memory), runs the reverse
state-gradient pass, then the parallel dq/dk/dv pass.
"""

import torch
import triton

from .la2_bwd import la2_bwd_dqkv_kernel, la2_bwd_dstate_kernel
from .la2_config import get_config
from .la2_fwd import la2_fwd_out_kernel, la2_fwd_state_kernel, la2_seg_scan_kernel


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (tl.dot would use tf32 otherwise); bf16/fp16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def _chunk_tables(cu_seqlens: torch.Tensor, BT: int):
    """(chunk_offsets (N,) int32: first chunk of each sequence, chunk_indices (C, 2) int32: (sequence, chunk), C,
    most chunks in one sequence)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nchunks = (lens + BT - 1) // BT
    offsets = torch.zeros_like(nchunks)
    offsets[1:] = torch.cumsum(nchunks, 0)[:-1]
    total = int(nchunks.sum().item())
    seq = torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), nchunks, output_size=total)
    local = torch.arange(total, device=cu_seqlens.device) - offsets[seq]
    indices = torch.stack([seq, local], 1).to(torch.int32).contiguous()
    return offsets.to(torch.int32), indices, total, int(nchunks.max().item()) if len(lens) else 0


def _strides(x: torch.Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def _launch(kernel, grid, args, kwargs, num_warps, num_stages):
    """Launch; if the compiled kernel needs more shared memory than the GPU has, retry with one stage."""
    try:
        kernel[grid](*args, **kwargs, num_warps=num_warps, num_stages=num_stages)
    except triton.runtime.errors.OutOfResources:
        if num_stages == 1:
            raise
        kernel[grid](*args, **kwargs, num_warps=num_warps, num_stages=1)


class _Plan:
    """Shapes, configs and chunk tables of one call, shared by forward and backward."""

    def __init__(self, q, v, cu_seqlens, override=None):
        self.B, self.T, self.H, self.D = q.shape
        self.E = v.shape[-1]
        self.varlen = cu_seqlens is not None
        self.cu_seqlens = cu_seqlens
        self.N = cu_seqlens.numel() - 1 if self.varlen else self.B
        self.grid_bh = self.H if self.varlen else self.B * self.H
        self.cfg = get_config(self.D, self.E, q.dtype, self.N * self.H, override)
        self._tables = {}

    def chunks(self, BT):
        """(chunk_offsets, chunk_indices, number of chunks, output-grid size along chunks, most chunks in one
        sequence) for chunk length BT."""
        if BT not in self._tables:
            if self.varlen:
                off, idx, total, most = _chunk_tables(self.cu_seqlens, BT)
                self._tables[BT] = (off, idx, total, total, most)
            else:
                nt = triton.cdiv(self.T, BT)
                self._tables[BT] = (None, None, self.B * nt, nt, nt)
        return self._tables[BT]

    def segments(self, c):
        """(SEG, NSEG): chunks per segment of the state passes (0: one walk per sequence) and segments per sequence."""
        most = self.chunks(c["BT"])[4]
        SEG = c.get("SEG", 0)
        if SEG <= 0 or most <= SEG:
            return 0, 1
        return SEG, triton.cdiv(most, SEG)


def _state_pass(plan, c, k, v, slope, h0, store_ht, cu_seqlens, h_dtype):
    """Chunk states h (chunks, H, D, E) in h_dtype, the final states (fp32) if store_ht, and (segmented walk) the
    true states entering each segment (N*H*NSEG, D, E) fp32, else None."""
    offsets, _, chunks, _, _ = plan.chunks(c["BT"])
    SEG, NSEG = plan.segments(c)
    h = torch.empty((chunks, plan.H, plan.D, plan.E), dtype=h_dtype, device=k.device)
    ht = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=k.device) if store_ht else None
    seg = torch.empty((plan.N * plan.H * NSEG, plan.D, plan.E), dtype=torch.float32, device=k.device) if SEG else None
    tiles = (triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    args = (k, v, h, h0, ht, seg, slope, cu_seqlens, offsets, *_strides(k), *_strides(v),
            plan.T, NSEG, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"], SEG)
    kwargs = dict(HAS_DECAY=slope is not None, USE_H0=h0 is not None, STORE_HT=store_ht, STORE_H=True,
                  IS_VARLEN=plan.varlen, PREC=_prec(k.dtype))
    _launch(la2_fwd_state_kernel, (plan.N * plan.H * NSEG, *tiles), args, kwargs, c["warps_s"], c["stages_s"])
    if SEG:
        _seg_scan(plan, c, seg, h0, ht, slope, cu_seqlens, SEG, NSEG, reverse=False)
    return h, ht, seg


def _seg_scan(plan, c, seg, init, fin, slope, cu_seqlens, SEG, NSEG, reverse):
    grid = (plan.N * plan.H, triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    la2_seg_scan_kernel[grid](
        seg, init, fin, slope, cu_seqlens, plan.T, NSEG, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"], SEG,
        HAS_DECAY=slope is not None, USE_INIT=init is not None, STORE_FIN=fin is not None, REVERSE=reverse,
        IS_VARLEN=plan.varlen,
    )


def _forward(plan, q, k, v, slope, h0, output_final_state, cu_seqlens):
    c = plan.cfg["fwd"]
    h, ht, seg = _state_pass(plan, c, k, v, slope, h0, output_final_state, cu_seqlens, q.dtype)
    _, indices, _, grid_t, _ = plan.chunks(c["BT"])
    SEG, NSEG = plan.segments(c)
    o = torch.empty((plan.B, plan.T, plan.H, plan.E), dtype=q.dtype, device=q.device)
    grid = (grid_t, triton.cdiv(plan.E, c["BVO"]), plan.grid_bh)
    args = (q, k, v, h, seg, o, slope, cu_seqlens, indices, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            plan.T, NSEG, plan.H, plan.D, plan.E, c["BT"], c["BKO"], c["BVO"], SEG)
    kwargs = dict(HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_fwd_out_kernel, grid, args, kwargs, c["warps_o"], c["stages_o"])
    return o, ht


def _backward(plan, q, k, v, slope, h0, do, dht, cu_seqlens, need_dh0):
    c = plan.cfg["bwd"]
    h, _, seg = _state_pass(plan, c, k, v, slope, h0, False, cu_seqlens, q.dtype)
    offsets, indices, chunks, grid_t, _ = plan.chunks(c["BT"])
    SEG, NSEG = plan.segments(c)
    dh = torch.empty((chunks, plan.H, plan.D, plan.E), dtype=q.dtype, device=q.device)
    dh0 = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=q.device) if need_dh0 else None
    gseg = torch.empty((plan.N * plan.H * NSEG, plan.D, plan.E), dtype=torch.float32, device=q.device) if SEG else None
    grid = (plan.N * plan.H * NSEG, triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    args = (q, do, dh, dht, dh0, gseg, slope, cu_seqlens, offsets, *_strides(q), *_strides(do),
            plan.T, NSEG, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"], SEG)
    kwargs = dict(HAS_DECAY=slope is not None, USE_DHT=dht is not None, STORE_DH0=need_dh0,
                  IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_bwd_dstate_kernel, grid, args, kwargs, c["warps_s"], c["stages_s"])
    if SEG:
        _seg_scan(plan, c, gseg, dht, dh0, slope, cu_seqlens, SEG, NSEG, reverse=True)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grid = (grid_t, 1, plan.grid_bh)
    BD = max(16, triton.next_power_of_2(plan.D))
    args = (q, k, v, do, h, dh, seg, gseg, dq, dk, dv, slope, cu_seqlens, indices,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq), *_strides(dk), *_strides(dv),
            plan.T, NSEG, plan.H, plan.D, plan.E, c["BT"], BD, c["BVB"], SEG)
    kwargs = dict(HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_bwd_dqkv_kernel, grid, args, kwargs, c["warps_b"], c["stages_b"])
    return dq, dk, dv, dh0


class LightningAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slope, initial_state, output_final_state, cu_seqlens, config):
        plan = _Plan(q, v, cu_seqlens, config)
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
        return dq, dk, dv, None, dh0, None, None, None


def lightning_attn_triton(q, k, v, slope=None, initial_state=None, output_final_state=False, cu_seqlens=None, *,
                          config=None):
    """Lightning Attention-2 (Contract 1 of DESIGN.md) through the Triton kernels.

    q, k: (B, T, H, D); v: (B, T, H, E); same dtype (bf16/fp16/fp32), unit stride on the last dim.
    slope: None (no decay) or float32 (H,) >= 0, decay lam_h = exp(-slope_h).
    initial_state: None or float32 (N, H, D, E), the true state before each sequence.
    cu_seqlens: None or int32 (N+1,) document offsets packed along T (B == 1); the state resets at each boundary.
    Returns (o with v's shape and q's dtype, final_state float32 (N, H, D, E) or None).
    Differentiable in q, k, v and initial_state. Expects inputs already validated by tnl.ops.
    config: optional {"fwd": {...}, "bwd": {...}} overriding block sizes (see la2_config; used by the tuner).
    """
    B, H = q.shape[0], q.shape[2]
    if (H if cu_seqlens is not None else B * H) > 65535:
        raise ValueError(f"lightning_attn_triton: batch x heads = {B * H} exceeds the CUDA grid limit of 65535; "
                         "split the batch")
    if slope is not None:
        slope = slope.float().contiguous()
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    return LightningAttnFunction.apply(q, k, v, slope, initial_state, bool(output_final_state), cu_seqlens, config)
