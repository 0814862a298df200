"""Host side of Lightning Attention-2: launches the kernels and wraps them in an autograd Function.

Inputs are validated by tnl.ops (Contract 1); this module only checks what the kernels themselves need.
Two algorithms, chosen per phase by the config key ALGO (la2_config):
- "chunk" (default): forward = state pass (sequential over chunks, parallel over sequence x head x D-tile x E-tile)
  then output pass (parallel over chunks). Backward recomputes the chunk states instead of keeping them (memory),
  runs the reverse state-gradient pass, then the parallel dq/dk/dv pass.
- "fused" (la2_fused.py): one walk over the chunks of each segment with the state in registers; forward
  o = walk(q, k, v); backward dq = walk(dO, v, k), dv = walk(k, q, dO, reversed), dk = walk(v, dO, q, reversed).
  States cross segments through a segment-sum pass and a scan; the forward keeps its (small) segment states for the
  backward when the backward cuts segments the same way.
"""

import math
import weakref

import torch
import triton

from .la2_bwd import la2_bwd_dqkv_kernel, la2_bwd_dstate_kernel
from .la2_config import get_config
from .la2_fused import la2_segscan_kernel, la2_segsum_kernel, la2_walk_dkv_kernel, la2_walk_kernel
from .la2_fwd import la2_fwd_out_kernel, la2_fwd_state_kernel


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (tl.dot would use tf32 otherwise); bf16/fp16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


# Varlen tables (chunk and segment indices) cost a host sync to build. Every layer of a model step passes the same
# cu_seqlens tensor, so they are kept per tensor object and in-place version (weakly: dropped with the tensor): one
# sync per step instead of one per layer and pass, which otherwise stalls the CPU's run-ahead of the GPU each time.
# (tnl.ops remembers its value checks the same way; tnl_kernels does not import tnl, so the two stay separate.)
_varlen_cache: dict[int, tuple] = {}


def _cached_table(cu_seqlens: torch.Tensor, key, build):
    if cu_seqlens.is_inference():  # no version counter to trust: build every time
        return build()
    ident = id(cu_seqlens)
    entry = _varlen_cache.get(ident)
    if entry is None or entry[0]() is not cu_seqlens or entry[1] != cu_seqlens._version:
        ref = weakref.ref(cu_seqlens, lambda _, ident=ident: _varlen_cache.pop(ident, None))
        entry = _varlen_cache[ident] = (ref, cu_seqlens._version, {})
    tables = entry[2]
    if key not in tables:
        tables[key] = build()
    return tables[key]


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

    def __init__(self, q, v, cu_seqlens, override=None, k=None):
        self.B, self.T, self.H, self.D = q.shape
        self.E = v.shape[-1]
        self.varlen = cu_seqlens is not None
        self.cu_seqlens = cu_seqlens
        self.N = cu_seqlens.numel() - 1 if self.varlen else self.B
        self.grid_bh = self.H if self.varlen else self.B * self.H
        self.cfg = get_config(self.D, self.E, q.dtype, self.N * self.H, override, q.device)
        self._tables = {}
        self._segs = {}
        # the fused walks index tokens inside a segment with int32 offsets: segments stay below 2^31 elements
        self.tok_stride = max(q.stride(1), v.stride(1), k.stride(1) if k is not None else 0,
                              self.H * max(self.D, self.E), 1)

    def fused_segments(self, c):
        """Segments of the fused walks for phase config c: an object with SEGTOK (tokens per segment, a multiple of
        BT), NSEG (segments per row; dense only), n_seg (walk programs per head and value tile), n_bnd (inner
        boundaries = stored states per head), and for varlen the tables seg_idx, bnd_idx, boff (else None)."""
        BT, SEGT = c["BT"], c.get("SEGT", 0)
        SEGTOK = max(1, SEGT // BT) * BT if SEGT > 0 else (1 << 30)
        SEGTOK = min(SEGTOK, max(BT, (2**31 - 1) // self.tok_stride // BT * BT))
        if SEGTOK not in self._segs:
            build = lambda: _fused_segments(self, SEGTOK)
            self._segs[SEGTOK] = _cached_table(self.cu_seqlens, ("segs", SEGTOK), build) if self.varlen else build()
        return self._segs[SEGTOK]

    def chunks(self, BT):
        """(chunk_offsets, chunk_indices, number of chunks, output-grid size along chunks, most chunks in one
        sequence) for chunk length BT."""
        if BT not in self._tables:
            if self.varlen:
                off, idx, total, most = _cached_table(self.cu_seqlens, ("chunks", BT),
                                                      lambda: _chunk_tables(self.cu_seqlens, BT))
                self._tables[BT] = (off, idx, total, total, most)
            else:
                nt = triton.cdiv(self.T, BT)
                self._tables[BT] = (None, None, self.B * nt, nt, nt)
        return self._tables[BT]


def _state_pass(plan, c, k, v, slope, h0, store_ht, cu_seqlens, h_dtype):
    """Chunk states h (chunks, H, D, E) in h_dtype and the final states (fp32) if store_ht."""
    offsets, _, chunks, _, _ = plan.chunks(c["BT"])
    h = torch.empty((chunks, plan.H, plan.D, plan.E), dtype=h_dtype, device=k.device)
    ht = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=k.device) if store_ht else None
    tiles = (triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    args = (k, v, h, h0, ht, slope, cu_seqlens, offsets, *_strides(k), *_strides(v),
            plan.T, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"])
    kwargs = dict(HAS_DECAY=slope is not None, USE_H0=h0 is not None, STORE_HT=store_ht, STORE_H=True,
                  IS_VARLEN=plan.varlen, PREC=_prec(k.dtype))
    _launch(la2_fwd_state_kernel, (plan.N * plan.H, *tiles), args, kwargs, c["warps_s"], c["stages_s"])
    return h, ht


def _forward(plan, q, k, v, slope, h0, output_final_state, cu_seqlens):
    c = plan.cfg["fwd"]
    h, ht = _state_pass(plan, c, k, v, slope, h0, output_final_state, cu_seqlens, q.dtype)
    _, indices, _, grid_t, _ = plan.chunks(c["BT"])
    o = torch.empty((plan.B, plan.T, plan.H, plan.E), dtype=q.dtype, device=q.device)
    grid = (grid_t, triton.cdiv(plan.E, c["BVO"]), plan.grid_bh)
    args = (q, k, v, h, o, slope, cu_seqlens, indices, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            plan.T, plan.H, plan.D, plan.E, c["BT"], c["BKO"], c["BVO"])
    kwargs = dict(HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_fwd_out_kernel, grid, args, kwargs, c["warps_o"], c["stages_o"])
    return o, ht


def _backward(plan, q, k, v, slope, h0, do, dht, cu_seqlens, need_dh0):
    c = plan.cfg["bwd"]
    h, _ = _state_pass(plan, c, k, v, slope, h0, False, cu_seqlens, q.dtype)
    offsets, indices, chunks, grid_t, _ = plan.chunks(c["BT"])
    dh = torch.empty((chunks, plan.H, plan.D, plan.E), dtype=q.dtype, device=q.device)
    dh0 = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=q.device) if need_dh0 else None
    grid = (plan.N * plan.H, triton.cdiv(plan.D, c["BK"]), triton.cdiv(plan.E, c["BV"]))
    args = (q, do, dh, dht, dh0, slope, cu_seqlens, offsets, *_strides(q), *_strides(do),
            plan.T, plan.H, plan.D, plan.E, c["BT"], c["BK"], c["BV"])
    kwargs = dict(HAS_DECAY=slope is not None, USE_DHT=dht is not None, STORE_DH0=need_dh0,
                  IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_bwd_dstate_kernel, grid, args, kwargs, c["warps_s"], c["stages_s"])
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grid = (grid_t, 1, plan.grid_bh)
    BD = max(16, triton.next_power_of_2(plan.D))
    args = (q, k, v, do, h, dh, dq, dk, dv, slope, cu_seqlens, indices,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq), *_strides(dk), *_strides(dv),
            plan.T, plan.H, plan.D, plan.E, c["BT"], BD, c["BVB"])
    kwargs = dict(HAS_DECAY=slope is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_bwd_dqkv_kernel, grid, args, kwargs, c["warps_b"], c["stages_b"])
    return dq, dk, dv, dh0


SCAN_TILE = 32  # key and value tile of the cross-segment scan


class _FusedSegs:
    def __init__(self, SEGTOK, NSEG, n_seg, n_bnd, seg_idx=None, bnd_idx=None, boff=None):
        self.SEGTOK, self.NSEG, self.n_seg, self.n_bnd = SEGTOK, NSEG, n_seg, n_bnd
        self.seg_idx, self.bnd_idx, self.boff = seg_idx, bnd_idx, boff


def _fused_segments(plan, SEGTOK):
    if not plan.varlen:
        NSEG = max(1, triton.cdiv(plan.T, SEGTOK))
        return _FusedSegs(SEGTOK, NSEG, plan.B * NSEG, plan.B * (NSEG - 1))
    cu = plan.cu_seqlens
    lens = (cu[1:] - cu[:-1]).long()
    nseg = ((lens + SEGTOK - 1) // SEGTOK).clamp(min=1)
    n_seg, n_bnd = (int(x) for x in torch.stack([nseg.sum(), nseg.sum() - nseg.numel()]).tolist())
    docs = torch.arange(len(lens), device=cu.device)

    def table(counts, total):
        off = torch.cumsum(counts, 0) - counts
        doc = torch.repeat_interleave(docs, counts, output_size=total)
        local = torch.arange(total, device=cu.device) - off[doc]
        return torch.stack([doc, local], 1).to(torch.int32).contiguous(), off.to(torch.int32).contiguous()

    seg_idx, _ = table(nseg, n_seg)
    bnd_idx, boff = table(nseg - 1, n_bnd)
    return _FusedSegs(SEGTOK, 1, n_seg, n_bnd, seg_idx, bnd_idx, boff)


def _st4(x, transpose=False):
    """Strides (row, head, key, value) of a (rows, H, D, E) state tensor, read as D x E or (transpose) E x D."""
    if x is None:
        return 0, 0, 0, 0
    a, b, d, e = x.stride()
    return (a, b, e, d) if transpose else (a, b, d, e)


def _seg_buffer(plan, segs, DK, DV, device):
    return torch.empty((segs.n_bnd, plan.H, DK, DV), dtype=torch.float32, device=device)


def _seg_states(plan, segs, c, k, v, slope, init, reverse, buf=None):
    """True states at every inner segment boundary, (n_bnd, H, DK, DV) fp32: forward, the state entering each
    segment but the first (k, v = k, v; init = initial state); reverse, the gradient entering each segment but the
    last from the right (k, v = q, dO; init = final-state gradient). buf: the output, when allocated by the caller."""
    DK, DV = k.shape[-1], v.shape[-1]
    if buf is None:
        buf = _seg_buffer(plan, segs, DK, DV, k.device)
    BK = min(c["BKS"], max(32, triton.next_power_of_2(DK)))
    BV = min(c["BVS"], max(32, triton.next_power_of_2(DV)))
    tiles = triton.cdiv(DK, BK) * triton.cdiv(DV, BV)
    common = dict(HAS_DECAY=slope is not None, REVERSE=reverse, IS_VARLEN=plan.varlen)
    cut = c["SEGCUT"] * math.log(2.0)  # bits -> nats
    args = (k, v, buf, slope, plan.cu_seqlens, segs.bnd_idx, *_strides(k), *_strides(v), plan.T, segs.NSEG,
            segs.SEGTOK, cut, plan.H, DK, DV, c.get("BTS", c["BT"]), BK, BV)
    _launch(la2_segsum_kernel, (segs.n_bnd * plan.H * tiles,), args, dict(common, PREC=_prec(k.dtype)),
            c["warps_seg"], c["stages_seg"])
    # the scan is a serial walk over a sequence's boundaries: small tiles give it many programs (an H100 spent
    # 27-45 us per call in 16 programs of 128 x 128 at T = 64K, H = 16)
    BK, BV = min(SCAN_TILE, BK), min(SCAN_TILE, BV)
    tiles = triton.cdiv(DK, BK) * triton.cdiv(DV, BV)
    args = (buf, init, slope, plan.cu_seqlens, segs.boff, plan.T, segs.NSEG, segs.SEGTOK, plan.H, DK, DV, BK, BV)
    _launch(la2_segscan_kernel, (plan.N * plan.H * tiles,), args, dict(common, USE_INIT=init is not None), 1, 1)
    return buf


def _walk(plan, segs, c, q, k, v, o, state, init, fin, slope, reverse, transpose):
    """o <- the walk over (q, k, v) (see la2_fused); state/init/fin are (.., H, DK, DV) fp32 (transpose: stored
    as (.., H, DV, DK), the forward orientation, and read transposed in place)."""
    DK, DV = q.shape[-1], v.shape[-1]
    BD = max(32, triton.next_power_of_2(DK))
    BV = max(32, min(c["BV"], triton.next_power_of_2(DV)))
    grid = (segs.n_seg * plan.H * triton.cdiv(DV, BV),)
    args = (q, k, v, o, state, init, fin, slope, plan.cu_seqlens, segs.seg_idx, segs.boff,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            *_st4(state, transpose), *_st4(init, transpose), *_st4(fin),
            plan.T, segs.NSEG, segs.SEGTOK, plan.H, DK, DV, c["BT"], BD, BV)
    kwargs = dict(HAS_DECAY=slope is not None, USE_STATE=state is not None, USE_INIT=init is not None,
                  STORE_FIN=fin is not None, REVERSE=reverse, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
    _launch(la2_walk_kernel, grid, args, kwargs, c["warps"], c["stages"])


def _forward_fused(plan, q, k, v, slope, h0, output_final_state):
    """(o, final state or None, segment states for the backward or None)."""
    c = plan.cfg["fwd"]
    segs = plan.fused_segments(c)
    state = _seg_states(plan, segs, c, k, v, slope, h0, reverse=False) if segs.n_bnd else None
    o = torch.empty((plan.B, plan.T, plan.H, plan.E), dtype=q.dtype, device=q.device)
    ht = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=q.device) \
        if output_final_state else None
    _walk(plan, segs, c, q, k, v, o, state, h0, ht, slope, reverse=False, transpose=False)
    return o, ht, (segs.SEGTOK, state)


_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    """One extra CUDA stream per device (a CUDA tensor's device), for the backward's overlapped segment-state pass
    (bwd key OVERLAP)."""
    if device.index not in _SIDE_STREAMS:
        _SIDE_STREAMS[device.index] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[device.index]


def _backward_fused(plan, q, k, v, slope, h0, do, dht, need_dh0, saved):
    c = plan.cfg["bwd"]
    plan.tok_stride = max(plan.tok_stride, abs(do.stride(1)))
    segs = plan.fused_segments(c)
    state = None
    if segs.n_bnd:
        if saved is not None and saved[0] == segs.SEGTOK and saved[1] is not None:
            state = saved[1]
        else:
            state = _seg_states(plan, segs, c, k, v, slope, h0, reverse=False)
    overlap = bool(c.get("OVERLAP")) and segs.n_bnd > 0 and q.is_cuda
    if overlap:  # the reverse segment states do not need the dq walk: compute them on a second stream beside it
        main, side = torch.cuda.current_stream(q.device), _side_stream(q.device)
        # allocated on the main stream, which waits for the side one before reading and freeing it: no block of
        # the caching allocator crosses streams (record_stream would defer its reuse; benchmarks/NOTES.md)
        gstate = _seg_buffer(plan, segs, q.shape[-1], do.shape[-1], q.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            _seg_states(plan, segs, c, q, do, slope, dht, reverse=True, buf=gstate)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _walk(plan, segs, c, do, v, k, dq, state, h0, None, slope, reverse=False, transpose=True)
    del state
    if overlap:
        main.wait_stream(side)
    else:
        gstate = _seg_states(plan, segs, c, q, do, slope, dht, reverse=True) if segs.n_bnd else None
    dh0 = torch.empty((plan.N, plan.H, plan.D, plan.E), dtype=torch.float32, device=q.device) if need_dh0 else None
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    BD, BE = (max(32, triton.next_power_of_2(x)) for x in (plan.D, plan.E))
    if c.get("DKV") and BD * BE <= 128 * 128:  # one reversed program for dk and dv: the whole state in registers
        args = (q, k, v, do, dk, dv, gstate, dht, dh0, slope, plan.cu_seqlens, segs.seg_idx, segs.boff,
                *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
                *_st4(gstate), *_st4(dht), *_st4(dh0), plan.T, segs.NSEG, segs.SEGTOK, plan.H, plan.D, plan.E,
                c["BT"], BD, BE)
        kwargs = dict(HAS_DECAY=slope is not None, USE_STATE=gstate is not None, USE_INIT=dht is not None,
                      STORE_FIN=dh0 is not None, IS_VARLEN=plan.varlen, PREC=_prec(q.dtype))
        _launch(la2_walk_dkv_kernel, (segs.n_seg * plan.H,), args, kwargs, c["warps"], c["stages"])
    else:
        _walk(plan, segs, c, k, q, do, dv, gstate, dht, dh0, slope, reverse=True, transpose=False)
        _walk(plan, segs, c, v, do, q, dk, gstate, dht, None, slope, reverse=True, transpose=True)
    return dq, dk, dv, dh0


class LightningAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slope, initial_state, output_final_state, cu_seqlens, config):
        plan = _Plan(q, v, cu_seqlens, config, k)
        segtok, seg_states = None, None
        if plan.cfg["fwd"]["ALGO"] == "fused":
            o, ht, (segtok, seg_states) = _forward_fused(plan, q, k, v, slope, initial_state, output_final_state)
        else:
            o, ht = _forward(plan, q, k, v, slope, initial_state, output_final_state, cu_seqlens)
        if plan.cfg["bwd"]["ALGO"] != "fused":
            seg_states = None
        ctx.save_for_backward(q, k, v, slope, initial_state, cu_seqlens, seg_states)
        ctx.plan, ctx.segtok = plan, segtok
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, slope, h0, cu_seqlens, seg_states = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(v)
        if do.stride(-1) != 1:
            do = do.contiguous()
        if dht is not None:
            dht = dht.float().contiguous()
        need_dh0 = h0 is not None and ctx.needs_input_grad[4]
        if ctx.plan.cfg["bwd"]["ALGO"] == "fused":
            dq, dk, dv, dh0 = _backward_fused(ctx.plan, q, k, v, slope, h0, do, dht, need_dh0,
                                              (ctx.segtok, seg_states))
        else:
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
    config: optional {"fwd": {...}, "bwd": {...}} overriding block sizes and the algorithm per phase
    ({"ALGO": "fused", ...}; see la2_config; used by the tuner), and "DMAX" / "EMAX" (default 128 each): a key
    dim above DMAX is cut into equal parts of at most DMAX, one kernel call each, outputs (each in q's dtype)
    summed in fp32 and rounded once, and final states concatenated along D; a value dim above EMAX likewise into
    parts whose outputs and states are concatenated along E. Both are exact (q.k is a sum over key-dim parts;
    output column e reads only column e of v), and they keep every kernel call at the 128 x 128 state the blocks
    are tuned for, which was faster than one wide call at every measured 256-wide shape (benchmarks/NOTES.md,
    LA2 kernels: head dims above 128).
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
    E = v.shape[-1]
    emax = (config or {}).get("EMAX", 128)
    if E > emax:  # value-dim parts: each output column depends on its own columns of v only
        part = triton.cdiv(E, triton.cdiv(E, emax))
        h0s = ([h.contiguous() for h in initial_state.split(part, dim=3)] if initial_state is not None
               else [None] * triton.cdiv(E, part))
        outs = [_split_keys(q, k, vi, slope, h0, output_final_state, cu_seqlens, config)
                for vi, h0 in zip(v.split(part, dim=-1), h0s)]
        ht = torch.cat([ht for _, ht in outs], dim=3) if output_final_state else None
        return torch.cat([o for o, _ in outs], dim=-1), ht
    return _split_keys(q, k, v, slope, initial_state, output_final_state, cu_seqlens, config)


def _split_keys(q, k, v, slope, initial_state, output_final_state, cu_seqlens, config):
    """LightningAttnFunction over key-dim parts of at most DMAX (see lightning_attn_triton)."""
    D = q.shape[-1]
    dmax = (config or {}).get("DMAX", 128)
    if D <= dmax:
        return LightningAttnFunction.apply(q, k, v, slope, initial_state, bool(output_final_state), cu_seqlens,
                                           config)
    part = triton.cdiv(D, triton.cdiv(D, dmax))  # equal parts: 256 -> 2 x 128, 192 -> 2 x 96
    h0s = ([h.contiguous() for h in initial_state.split(part, dim=2)] if initial_state is not None
           else [None] * triton.cdiv(D, part))
    outs = [LightningAttnFunction.apply(qi, ki, v, slope, h0, bool(output_final_state), cu_seqlens, config)
            for qi, ki, h0 in zip(q.split(part, dim=-1), k.split(part, dim=-1), h0s)]
    if len(outs) == 2:
        # one rounding as with an fp32 sum (the add computes in fp32), without 16-bit <-> fp32 copies: the LRPE
        # layer's D = 256 runs here, and the copies made 5 extra passes over o forward and 3 over its gradient
        o = outs[0][0] + outs[1][0]
    else:
        o = outs[0][0].float()
        for oi, _ in outs[1:]:
            o = o + oi.float()  # summed in fp32, rounded once
        o = o.to(q.dtype)
    ht = torch.cat([ht for _, ht in outs], dim=2) if output_final_state else None
    return o, ht
