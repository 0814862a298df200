"""Lightning Attention-2 backward kernels (chunked form; notation of la2_fwd.py).

With G the gradient of the state at the end of a chunk (from later chunks and the final state), and S0 the state
before it, the chunk's gradients are
    dq = (dO V^T * M) K + diag(lam^(j+1)) dO S0^T
    dk = (dO V^T * M)^T Q + diag(lam^(L-1-i)) V G^T
    dv = (Q K^T * M)^T dO + diag(lam^(L-1-i)) K G
    dS0 = lam^L G + sum_j lam^(j+1) q_j^T do_j          (= G of the previous chunk; d initial_state for the first)
`la2_bwd_dstate_kernel` walks the chunks backwards storing G per chunk; `la2_bwd_dqkv_kernel` then computes every
chunk's gradients in parallel from the recomputed S0 (la2_fwd_state_kernel) and G.
"""

import triton
import triton.language as tl

from .la2_fwd import _chunk_coords, _seq_bounds


@triton.jit
def la2_bwd_dstate_kernel(
    q, do, dh, dht, dh0, slope, cu_seqlens, chunk_offsets,
    s_qb, s_qt, s_qh, s_db, s_dt, s_dh,
    T, H: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (N*H, cdiv(D,BK), cdiv(E,BV)). dh[(c0+c), head] <- G of chunk c (dh.dtype); dh0 <- dS0 of chunk 0."""
    i_nh, i_k, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_b, bos, seq_len, c0 = _seq_bounds(cu_seqlens, chunk_offsets, i_n, T, BT, IS_VARLEN)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < D) & (o_v[None, :] < E)
    p_q = q + i_b * s_qb + bos * s_qt + i_h * s_qh
    p_do = do + i_b * s_db + bos * s_dt + i_h * s_dh
    o_de = o_k[:, None] * E + o_v[None, :]

    b_g = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_g += tl.load(dht + i_nh.to(tl.int64) * D * E + o_de, mask=m_kv, other=0.0)
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
    NT = tl.cdiv(seq_len, BT)
    for r in range(0, NT):
        c = NT - 1 - r
        tl.store(dh + ((c0 + c) * H + i_h) * D * E + o_de, b_g.to(dh.dtype.element_ty), mask=m_kv)
        t = c * BT + o_t
        m_t = t < seq_len
        b_q = tl.load(p_q + t[:, None] * s_qt + o_k[None, :], mask=m_t[:, None] & (o_k[None, :] < D), other=0.0)
        b_do = tl.load(p_do + t[:, None] * s_dt + o_v[None, :], mask=m_t[:, None] & (o_v[None, :] < E), other=0.0)
        if HAS_DECAY:
            L = tl.minimum(seq_len - c * BT, BT).to(tl.float32)
            w = tl.where(m_t, tl.exp(-b_slope * (o_t + 1).to(tl.float32)), 0.0)
            b_q = (b_q * w[:, None]).to(b_do.dtype)
            b_g = b_g * tl.exp(-b_slope * L) + tl.dot(tl.trans(b_q), b_do, input_precision=PREC)
        else:
            b_g += tl.dot(tl.trans(b_q), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * D * E + o_de, b_g, mask=m_kv)


@triton.jit
def la2_bwd_dqkv_kernel(
    q, k, v, do, h, dh, dq, dk, dv, slope, cu_seqlens, chunk_indices,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
    s_dqb, s_dqt, s_dqh, s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh,
    T, H: tl.constexpr, D: tl.constexpr, E: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (chunks, 1, B*H). One program holds the whole D (BD >= D) and loops over E in tiles of BV."""
    i_t, i_bh = tl.program_id(0), tl.program_id(2)
    i_h = i_bh % H
    i_b, bos, seq_len, i_c, i_hc = _chunk_coords(cu_seqlens, chunk_indices, i_t, i_bh // H, T, BT, IS_VARLEN)
    o_t = tl.arange(0, BT)
    t = i_c * BT + o_t
    m_t = t < seq_len
    o_k = tl.arange(0, BD)
    m_tk = m_t[:, None] & (o_k[None, :] < D)
    b_q = tl.load(q + i_b * s_qb + bos * s_qt + i_h * s_qh + t[:, None] * s_qt + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(k + i_b * s_kb + bos * s_kt + i_h * s_kh + t[:, None] * s_kt + o_k[None, :], mask=m_tk, other=0.0)
    p_v = v + i_b * s_vb + bos * s_vt + i_h * s_vh
    p_do = do + i_b * s_db + bos * s_dt + i_h * s_dh
    p_dv = dv + i_b * s_dvb + bos * s_dvt + i_h * s_dvh
    p_h = h + (i_hc * H + i_h) * D * E
    p_dh = dh + (i_hc * H + i_h) * D * E

    causal = o_t[:, None] >= o_t[None, :]
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
        L = tl.minimum(seq_len - i_c * BT, BT).to(tl.float32)
        diff = tl.where(causal, (o_t[:, None] - o_t[None, :]).to(tl.float32), 0.0)
        b_m = tl.where(causal, tl.exp(-b_slope * diff), 0.0)
        w_q = tl.exp(-b_slope * (o_t + 1).to(tl.float32))
        w_k = tl.where(m_t, tl.exp(-b_slope * tl.where(m_t, L - 1.0 - o_t, 0.0)), 0.0)
    else:
        b_m = tl.where(causal, 1.0, 0.0)
    # A^T with A = (Q K^T) * M: dv's left-product operand.
    b_at = (tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * tl.trans(b_m)).to(b_q.dtype)

    b_dp = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BD], dtype=tl.float32)
    b_dk = tl.zeros([BT, BD], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(E, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < E)
        m_kv = (o_k[:, None] < D) & (o_v[None, :] < E)
        b_v = tl.load(p_v + t[:, None] * s_vt + o_v[None, :], mask=m_tv, other=0.0)
        b_do = tl.load(p_do + t[:, None] * s_dt + o_v[None, :], mask=m_tv, other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * E + o_v[None, :], mask=m_kv, other=0.0)
        b_g = tl.load(p_dh + o_k[:, None] * E + o_v[None, :], mask=m_kv, other=0.0)
        b_h = b_h.to(b_q.dtype)
        b_g = b_g.to(b_q.dtype)
        b_dp += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(b_g), input_precision=PREC)
        b_dv_inter = tl.dot(b_k, b_g, input_precision=PREC)
        if HAS_DECAY:
            b_dv_inter *= w_k[:, None]
        b_dv = tl.dot(b_at, b_do, input_precision=PREC) + b_dv_inter
        tl.store(p_dv + t[:, None] * s_dvt + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)
    if HAS_DECAY:
        b_dq *= w_q[:, None]
        b_dk *= w_k[:, None]
    b_ds = (b_dp * b_m).to(b_q.dtype)
    b_dq += tl.dot(b_ds, b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_ds), b_q, input_precision=PREC)
    tl.store(dq + i_b * s_dqb + bos * s_dqt + i_h * s_dqh + t[:, None] * s_dqt + o_k[None, :],
             b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + i_b * s_dkb + bos * s_dkt + i_h * s_dkh + t[:, None] * s_dkt + o_k[None, :],
             b_dk.to(dk.dtype.element_ty), mask=m_tk)
