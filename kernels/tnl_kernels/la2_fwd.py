"""Lightning Attention-2 forward kernels (chunked form).

Per head h with decay lam = exp(-slope_h), the true state is S_t = lam * S_{t-1} + k_t^T v_t and o_t = q_t S_t.
A sequence is cut into chunks of BT tokens. For a chunk starting after state S0, with local index j:
    o_j = lam^(j+1) q_j S0  +  sum_{i<=j} lam^(j-i) (q_j . k_i) v_i          (right product + masked left product)
    S_end = lam^L S0 + sum_i lam^(L-1-i) k_i^T v_i                           (L = tokens in the chunk)
Two kernels: `la2_fwd_state_kernel` runs over the chunks of one sequence in order (one program per (sequence, head,
D-tile, E-tile)) and stores the state before each chunk; `la2_fwd_out_kernel` then computes every chunk's output in
parallel. (Long sequences with few (sequence, head) pairs are the fused walk's domain, kernels/tnl_kernels/la2_fused.py, which
walks segments in parallel.) Tensors are read in place in the (B, T, H, D) layout through their strides (last dim
unit stride).
Sequences are either B rows of length T, or (IS_VARLEN) documents packed in row 0 at offsets cu_seqlens.
"""

import triton
import triton.language as tl


@triton.jit
def _seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(batch row, first token, length, index of the first chunk in the chunk-state buffer) of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
        i_b = 0
    else:
        bos = tl.zeros([], dtype=tl.int64)
        seq_len = tl.zeros([], dtype=tl.int64) + T
        c0 = i_n.to(tl.int64) * tl.cdiv(T, BT)
        i_b = i_n.to(tl.int64)  # i_b * batch stride can pass 2^31 elements
    return i_b, bos, seq_len, c0


@triton.jit
def _chunk_coords(cu_seqlens, chunk_indices, i_t, i_b_in, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """For output-style grids: (batch row, first token of the sequence, its length, chunk index inside the sequence,
    global chunk index in the chunk-state buffer) of program chunk i_t."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_t)
        i_c = tl.load(chunk_indices + 2 * i_t + 1)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
        i_hc = i_t.to(tl.int64)
        i_b = 0
    else:
        i_n = i_b_in
        i_c = i_t
        bos = tl.zeros([], dtype=tl.int64)
        seq_len = tl.zeros([], dtype=tl.int64) + T
        i_b = i_b_in.to(tl.int64)
        i_hc = i_b * tl.cdiv(T, BT) + i_t
    return i_b, bos, seq_len, i_c, i_hc


@triton.jit
def la2_fwd_state_kernel(
    k, v, h, h0, ht, slope, cu_seqlens, chunk_offsets,
    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
    T, H: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_H: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (N*H, cdiv(D,BK), cdiv(E,BV)). h[(c0+c), head] <- true state before chunk c (h.dtype); ht <- final
    state (fp32). h0/ht are (N, H, D, E) fp32 contiguous; h is (chunks, H, D, E) contiguous."""
    i_nh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len, c0 = _seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < D) & (o_v[None, :] < E)
    p_k = k + i_b * s_kb + bos * s_kt + i_h * s_kh
    p_v = v + i_b * s_vb + bos * s_vt + i_h * s_vh
    o_de = o_k[:, None] * E + o_v[None, :]

    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_s += tl.load(h0 + i_nh.to(tl.int64) * D * E + o_de, mask=m_kv, other=0.0)
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
    for c in range(0, tl.cdiv(seq_len, BT)):
        if STORE_H:
            tl.store(h + ((c0 + c) * H + i_h) * D * E + o_de, b_s.to(h.dtype.element_ty), mask=m_kv)
        t = c * BT + o_t
        m_t = t < seq_len
        b_k = tl.load(p_k + t[:, None] * s_kt + o_k[None, :], mask=m_t[:, None] & (o_k[None, :] < D), other=0.0)
        b_v = tl.load(p_v + t[:, None] * s_vt + o_v[None, :], mask=m_t[:, None] & (o_v[None, :] < E), other=0.0)
        if HAS_DECAY:
            L = tl.minimum(seq_len - c * BT, BT).to(tl.float32)
            w = tl.where(m_t, tl.exp(-b_slope * tl.where(m_t, L - 1.0 - o_t, 0.0)), 0.0)
            b_v = (b_v * w[:, None]).to(b_k.dtype)
            b_s = b_s * tl.exp(-b_slope * L) + tl.dot(tl.trans(b_k), b_v, input_precision=PREC)
        else:
            b_s += tl.dot(tl.trans(b_k), b_v, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * D * E + o_de, b_s, mask=m_kv)


@triton.jit
def la2_fwd_out_kernel(
    q, k, v, h, o, slope, cu_seqlens, chunk_indices,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_ot, s_oh,
    T, H: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (chunks, cdiv(E,BV), B*H) (B = 1 when varlen). o_chunk = (Q K^T * M) V + diag(lam^(j+1)) Q S0."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h = i_bh % H
    i_b, bos, seq_len, i_c, i_hc = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_bh // H, T, BT, IS_VARLEN)
    o_t = tl.arange(0, BT)
    t = i_c * BT + o_t
    m_t = t < seq_len
    o_v = i_v * BV + tl.arange(0, BV)
    p_q = q + i_b * s_qb + bos * s_qt + i_h * s_qh
    p_k = k + i_b * s_kb + bos * s_kt + i_h * s_kh
    p_h = h + (i_hc * H + i_h) * D * E
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(D, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < D
        b_q = tl.load(p_q + t[:, None] * s_qt + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(p_k + t[:, None] * s_kt + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        m_kv = m_k[:, None] & (o_v[None, :] < E)
        b_h = tl.load(p_h + o_k[:, None] * E + o_v[None, :], mask=m_kv, other=0.0)
        b_o += tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PREC)
        b_a += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    causal = o_t[:, None] >= o_t[None, :]
    if HAS_DECAY:
        b_o *= tl.exp(-b_slope * (o_t + 1).to(tl.float32))[:, None]
        diff = tl.where(causal, (o_t[:, None] - o_t[None, :]).to(tl.float32), 0.0)
        b_a = tl.where(causal, b_a * tl.exp(-b_slope * diff), 0.0)
    else:
        b_a = tl.where(causal, b_a, 0.0)
    b_v = tl.load(v + i_b * s_vb + bos * s_vt + i_h * s_vh + t[:, None] * s_vt + o_v[None, :],
                  mask=m_t[:, None] & (o_v[None, :] < E), other=0.0)
    b_o += tl.dot(b_a.to(b_v.dtype), b_v, input_precision=PREC)
    p_o = o + i_b * s_ob + bos * s_ot + i_h * s_oh + t[:, None] * s_ot + o_v[None, :]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & (o_v[None, :] < E))
