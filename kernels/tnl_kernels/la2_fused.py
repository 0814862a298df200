"""Lightning Attention-2, second algorithm ("fused"): LA2's own loop run over segments of a sequence in parallel.

Notation of la2_fwd.py: S_t = lam S_{t-1} + k_t^T v_t, o_t = q_t S_t, lam = exp(-slope_h). A sequence is cut into
segments of SEGTOK tokens (a multiple of the chunk length BT; the last one may be shorter), segments into chunks.

`la2_walk_kernel` (grid: segments x heads x value-tiles, 1-D) keeps the true state (whole key dim x one value tile,
fp32) in registers, starting from the state entering its segment, and walks the segment's chunks in order:
    o_chunk = ((q k^T) * M) v + diag(lam^(j+1)) q S ;   S <- lam^L S + (k * lam^(L-1-i))^T v
so q, k, v are read once and o written once: no per-chunk state goes to memory. REVERSE computes the anti-causal
form the backward needs (i, j local to a chunk, in time order):
    o_i = sum_{j>=i} lam^(j-i) (q_i . k_j) v_j + lam^(L-1-i) q_i R ;   R <- lam^L R + sum_j lam^(j+1) k_j^T v_j
where R entering the last chunk of a sequence is the final-state gradient and R leaving position 0 is the gradient
of the initial state (the convention of la2_bwd.py's dS0). It runs as the same loop over a time-reversed view of the
segment (base at its last token, negated token strides; chunks counted from its end), where with j' = L-1-j the two
weights read lam^(j') and lam^(L-j'): only those exponents differ from the forward walk. With roles swapped the
same kernel gives all gradients (G = gradient of the true state):
    dq = walk(dO, v, k), state S^T;  dv = walk(k, q, dO, REVERSE), state G;  dk = walk(v, dO, q, REVERSE), state G^T.
`la2_walk_dkv_kernel` runs the last two as one program (whole D x E state; q, k, v, dO read once).

The state entering each segment comes from `la2_segsum_kernel` (each segment's own contribution, read k, v once)
then `la2_segscan_kernel` (a short sequential scan over the segments of each sequence). States are stored only at
the nseg - 1 inner boundaries of each sequence: row r = boff[n] + j holds, for boundary j (between segments j
and j+1), the true state entering segment j+1 (forward) or the gradient entering segment j from the right (REVERSE),
as a (rows, H, DK, DV) fp32 buffer. Consumers read it through strides, so the backward reads the forward states
transposed in place. The terminal segment of a sequence (last one forward, first one REVERSE) writes `fin` (final
state / initial-state gradient). Tensors are read in place in the (B, T, H, D) layout; IS_VARLEN: documents packed
in row 0 at cu_seqlens, segments from the host tables seg_idx (segment -> (document, segment)) and bnd_idx
(boundary row -> (document, boundary)).
"""

import triton
import triton.language as tl


@triton.jit
def _doc(cu_seqlens, i_n, T, IS_VARLEN: tl.constexpr):
    """(batch row (int64), first token (int64), length) of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = tl.load(cu_seqlens + i_n + 1) - tl.load(cu_seqlens + i_n)
        i_b = tl.zeros([], dtype=tl.int64)
    else:
        bos = tl.zeros([], dtype=tl.int64)
        seq_len = tl.zeros([], dtype=tl.int32) + T
        i_b = i_n.to(tl.int64)  # i_b * batch stride can pass 2^31 elements
    return i_b, bos, seq_len


@triton.jit
def _segment(i_g, seg_idx, cu_seqlens, T, NSEG, SEGTOK, REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(sequence, segment, segments in the sequence, batch row, token the walk starts at (int64), tokens) of walk
    segment i_g. REVERSE walks backwards in time: the same loop over a reversed view that starts at the segment's
    last token (callers negate the token strides), so chunks and rows count from the segment's end and the mask
    stays lower-triangular."""
    if IS_VARLEN:
        i_n = tl.load(seg_idx + 2 * i_g)
        i_s = tl.load(seg_idx + 2 * i_g + 1)
    else:
        i_n = i_g // NSEG
        i_s = i_g % NSEG
    i_b, bos, seq_len = _doc(cu_seqlens, i_n, T, IS_VARLEN)
    if IS_VARLEN:
        ns = tl.maximum(tl.cdiv(seq_len, SEGTOK), 1)
    else:
        ns = NSEG
    lo = i_s * SEGTOK
    n_tok = tl.minimum(seq_len - lo, SEGTOK)
    if REVERSE:
        tok0 = bos + lo + tl.maximum(n_tok - 1, 0)
    else:
        tok0 = bos + lo
    return i_n, i_s, ns, i_b, tok0, n_tok


@triton.jit
def _enter(state, init, boff, i_n, i_s, ns, i_h, o_k, o_v, s_sr, s_sh, s_sk, s_sv, s_in, s_ih, s_ik, s_iv,
           NSEG, DK: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, USE_STATE: tl.constexpr,
           USE_INIT: tl.constexpr, REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr):
    """The state entering a segment (fp32 BD x BV): a stored boundary state, or the sequence's initial state /
    final-state gradient at its edge. Scalar conditions enter the masks as a key-dim limit (`mask & scalar` breaks
    the interpreter's masked load)."""
    if REVERSE:
        j = i_s
        inner = i_s < ns - 1
        edge = i_s >= ns - 1
    else:
        j = i_s - 1
        inner = i_s > 0
        edge = i_s <= 0
    m_v = o_v < DV
    b_s = tl.zeros([BD, BV], dtype=tl.float32)
    if USE_STATE:
        if IS_VARLEN:
            rb = tl.load(boff + i_n)
        else:
            rb = i_n * (NSEG - 1)
        row = (rb + tl.maximum(j, 0)).to(tl.int64)
        b_s += tl.load(state + row * s_sr + i_h * s_sh + o_k[:, None] * s_sk + o_v[None, :] * s_sv,
                       mask=(o_k[:, None] < tl.where(inner, DK, 0)) & m_v[None, :], other=0.0)
    if USE_INIT:
        b_s += tl.load(init + i_n.to(tl.int64) * s_in + i_h * s_ih + o_k[:, None] * s_ik + o_v[None, :] * s_iv,
                       mask=(o_k[:, None] < tl.where(edge, DK, 0)) & m_v[None, :], other=0.0)
    return b_s


@triton.jit
def _decay_mask(o_t, keep, b_slope):
    """lam^(i-j) where keep (i >= j), else 0: the chunk's causal decay matrix."""
    return tl.where(keep, tl.exp(-b_slope * tl.where(keep, o_t[:, None] - o_t[None, :], 0).to(tl.float32)), 0.0)


@triton.jit
def _load_qkv(p_q, p_k, p_v, s_qt, s_kt, s_vt, t, m_t, o_k, o_v, m_k, m_v):
    """One chunk's q, k (rows t, key columns o_k) and v (value columns o_v), zero outside the masks; and the
    (row, key) and (row, value) masks for the stores."""
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_q = tl.load(p_q + t[:, None] * s_qt + o_k[None, :], mask=m_tk, other=0.0)
    b_k = tl.load(p_k + t[:, None] * s_kt + o_k[None, :], mask=m_tk, other=0.0)
    b_v = tl.load(p_v + t[:, None] * s_vt + o_v[None, :], mask=m_tv, other=0.0)
    return b_q, b_k, b_v, m_tk, m_tv


@triton.jit
def la2_walk_kernel(
    q, k, v, o, state, init, fin, slope, cu_seqlens, seg_idx, boff,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_ot, s_oh,
    s_sr, s_sh, s_sk, s_sv, s_in, s_ih, s_ik, s_iv, s_fn, s_fh, s_fk, s_fv,
    T, NSEG, SEGTOK,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, USE_STATE: tl.constexpr, USE_INIT: tl.constexpr, STORE_FIN: tl.constexpr,
    REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (segments * H * cdiv(DV, BV),). q, k: (.., DK); v, o: (.., DV). state/init/fin addressed as
    [row|sequence, head, key, value] through the strides given (a transposed view costs nothing)."""
    NV = (DV + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_h = (pid // NV) % H
    i_g = pid // NV // H
    i_n, i_s, ns, i_b, tok0, n_tok = _segment(i_g, seg_idx, cu_seqlens, T, NSEG, SEGTOK, REVERSE, IS_VARLEN)
    nc = tl.cdiv(n_tok, BT)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BD)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < DK
    m_v = o_v < DV
    p_q = q + i_b * s_qb + tok0 * s_qt + i_h * s_qh
    p_k = k + i_b * s_kb + tok0 * s_kt + i_h * s_kh
    p_v = v + i_b * s_vb + tok0 * s_vt + i_h * s_vh
    p_o = o + i_b * s_ob + tok0 * s_ot + i_h * s_oh
    if REVERSE:  # (see _segment)
        s_qt, s_kt, s_vt, s_ot = -s_qt, -s_kt, -s_vt, -s_ot
    b_s = _enter(state, init, boff, i_n, i_s, ns, i_h, o_k, o_v, s_sr, s_sh, s_sk, s_sv, s_in, s_ih, s_ik, s_iv,
                 NSEG, DK, DV, BD, BV, USE_STATE, USE_INIT, REVERSE, IS_VARLEN)

    keep = o_t[:, None] >= o_t[None, :]
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
        b_m = _decay_mask(o_t, keep, b_slope)
        # forward: lam^(j+1) q_j S and lam^(L-1-j) k_j^T v_j; reversed view: lam^j and lam^(L-j) (see module doc)
        if REVERSE:
            w_o = tl.exp(-b_slope * o_t.to(tl.float32))
        else:
            w_o = tl.exp(-b_slope * (o_t + 1).to(tl.float32))
    for c in range(0, nc):
        t = c * BT + o_t
        m_t = t < n_tok
        b_q, b_k, b_v, m_tk, m_tv = _load_qkv(p_q, p_k, p_v, s_qt, s_kt, s_vt, t, m_t, o_k, o_v, m_k, m_v)
        b_a = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        if HAS_DECAY:
            L = tl.minimum(n_tok - c * BT, BT).to(tl.float32)
            if REVERSE:
                e_s = tl.where(m_t, L - o_t, 0.0)
            else:
                e_s = tl.where(m_t, L - 1.0 - o_t, 0.0)
            w_s = tl.where(m_t, tl.exp(-b_slope * e_s), 0.0)
            b_o = tl.dot((b_a * b_m).to(b_v.dtype), b_v, input_precision=PREC)
            # the state's share, rows scaled on the operand so that both products share one accumulator
            b_o = tl.dot((b_q * w_o[:, None]).to(b_q.dtype), b_s.to(b_q.dtype), b_o, input_precision=PREC)
            b_vw = (b_v * w_s[:, None]).to(b_k.dtype)
            b_s = b_s * tl.exp(-b_slope * L) + tl.dot(tl.trans(b_k), b_vw, input_precision=PREC)
        else:
            b_o = tl.dot(tl.where(keep, b_a, 0.0).to(b_v.dtype), b_v, input_precision=PREC)
            b_o = tl.dot(b_q, b_s.to(b_q.dtype), b_o, input_precision=PREC)
            b_s += tl.dot(tl.trans(b_k), b_v, input_precision=PREC)
        tl.store(p_o + t[:, None] * s_ot + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)
    if STORE_FIN:
        if REVERSE:
            last = i_s == 0
        else:
            last = i_s == ns - 1
        tl.store(fin + i_n.to(tl.int64) * s_fn + i_h * s_fh + o_k[:, None] * s_fk + o_v[None, :] * s_fv, b_s,
                 mask=(o_k[:, None] < tl.where(last, DK, 0)) & m_v[None, :])


@triton.jit
def la2_walk_dkv_kernel(
    q, k, v, do, dk, dv, state, init, fin, slope, cu_seqlens, seg_idx, boff,
    s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_db, s_dt, s_dh,
    s_dkb, s_dkt, s_dkh, s_dvb, s_dvt, s_dvh,
    s_sr, s_sh, s_sk, s_sv, s_in, s_ih, s_ik, s_iv, s_fn, s_fh, s_fk, s_fv,
    T, NSEG, SEGTOK,
    H: tl.constexpr, D: tl.constexpr, E: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
    HAS_DECAY: tl.constexpr, USE_STATE: tl.constexpr, USE_INIT: tl.constexpr, STORE_FIN: tl.constexpr,
    IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """dv = walk(k, q, dO, REVERSE) and dk = walk(v, dO, q, REVERSE) in one program per (segment, head): both walks
    carry the same state G (whole D x E, fp32; dk's is G^T), so q, k, v, dO are read once (6 units instead of 8).
    Grid (segments * H,). state/init/fin: G-shaped (.., H, D, E) through strides, as la2_walk_kernel's."""
    pid = tl.program_id(0)
    i_h = pid % H
    i_n, i_s, ns, i_b, tok0, n_tok = _segment(pid // H, seg_idx, cu_seqlens, T, NSEG, SEGTOK, True, IS_VARLEN)
    nc = tl.cdiv(n_tok, BT)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BD)
    o_v = tl.arange(0, BE)
    m_k = o_k < D
    m_v = o_v < E
    p_q = q + i_b * s_qb + tok0 * s_qt + i_h * s_qh
    p_k = k + i_b * s_kb + tok0 * s_kt + i_h * s_kh
    p_v = v + i_b * s_vb + tok0 * s_vt + i_h * s_vh
    p_do = do + i_b * s_db + tok0 * s_dt + i_h * s_dh
    p_dk = dk + i_b * s_dkb + tok0 * s_dkt + i_h * s_dkh
    p_dv = dv + i_b * s_dvb + tok0 * s_dvt + i_h * s_dvh
    s_qt, s_kt, s_vt, s_dt, s_dkt, s_dvt = -s_qt, -s_kt, -s_vt, -s_dt, -s_dkt, -s_dvt  # reversed view
    b_g = _enter(state, init, boff, i_n, i_s, ns, i_h, o_k, o_v, s_sr, s_sh, s_sk, s_sv, s_in, s_ih, s_ik, s_iv,
                 NSEG, D, E, BD, BE, USE_STATE, USE_INIT, True, IS_VARLEN)
    keep = o_t[:, None] >= o_t[None, :]
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
        b_m = _decay_mask(o_t, keep, b_slope)
        w_o = tl.exp(-b_slope * o_t.to(tl.float32))
    else:
        b_m = tl.where(keep, 1.0, 0.0)
    for c in range(0, nc):
        t = c * BT + o_t
        m_t = t < n_tok
        b_q, b_k, b_v, m_tk, m_tv = _load_qkv(p_q, p_k, p_v, s_qt, s_kt, s_vt, t, m_t, o_k, o_v, m_k, m_v)
        b_do = tl.load(p_do + t[:, None] * s_dt + o_v[None, :], mask=m_tv, other=0.0)
        b_gc = b_g.to(b_q.dtype)
        # dv, then dk, each stored before the next is formed (shorter live ranges); then the state
        b_dv = tl.dot((tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * b_m).to(b_q.dtype), b_do,
                      input_precision=PREC)
        if HAS_DECAY:
            b_dv = tl.dot((b_k * w_o[:, None]).to(b_q.dtype), b_gc, b_dv, input_precision=PREC)
        else:
            b_dv = tl.dot(b_k, b_gc, b_dv, input_precision=PREC)
        tl.store(p_dv + t[:, None] * s_dvt + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)
        b_dk = tl.dot((tl.dot(b_v, tl.trans(b_do), input_precision=PREC) * b_m).to(b_q.dtype), b_q,
                      input_precision=PREC)
        if HAS_DECAY:
            b_dk = tl.dot((b_v * w_o[:, None]).to(b_q.dtype), tl.trans(b_gc), b_dk, input_precision=PREC)
        else:
            b_dk = tl.dot(b_v, tl.trans(b_gc), b_dk, input_precision=PREC)
        tl.store(p_dk + t[:, None] * s_dkt + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
        if HAS_DECAY:
            L = tl.minimum(n_tok - c * BT, BT).to(tl.float32)
            w_s = tl.where(m_t, tl.exp(-b_slope * tl.where(m_t, L - o_t, 0.0)), 0.0)
            b_g = b_g * tl.exp(-b_slope * L) + tl.dot(tl.trans((b_q * w_s[:, None]).to(b_q.dtype)), b_do,
                                                      input_precision=PREC)
        else:
            b_g += tl.dot(tl.trans(b_q), b_do, input_precision=PREC)
    if STORE_FIN:
        tl.store(fin + i_n.to(tl.int64) * s_fn + i_h * s_fh + o_k[:, None] * s_fk + o_v[None, :] * s_fv, b_g,
                 mask=(o_k[:, None] < tl.where(i_s == 0, D, 0)) & m_v[None, :])


@triton.jit
def la2_segsum_kernel(
    k, v, buf, slope, cu_seqlens, bnd_idx,
    s_kb, s_kt, s_kh, s_vb, s_vt, s_vh,
    T, NSEG, SEGTOK, cut,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    """Grid (boundaries * H * cdiv(DK,BK) * cdiv(DV,BV),). buf[r, h] <- one segment's own contribution to the state
    at boundary r: forward segment j, sum_t lam^(end-1-t) k_t^T v_t; REVERSE segment j+1, sum_t lam^(t-start+1)
    k_t^T v_t (t relative to the segment). buf is (rows, H, DK, DV) fp32 contiguous.
    cut > 0 (nats): chunks whose every weight lam^e is below exp(-cut) are not read: with decay, a head's segment
    sum only needs the cut / slope tokens nearest the boundary (the last ones forward, the first ones REVERSE); a
    dropped token moves the sum by less than exp(-cut) times its own k^T v. cut <= 0 sums every token."""
    NK = (DK + BK - 1) // BK
    NV = (DV + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_k = (pid // NV) % NK
    i_h = (pid // (NV * NK)) % H
    i_r = pid // (NV * NK * H)
    if IS_VARLEN:
        i_n = tl.load(bnd_idx + 2 * i_r)
        j = tl.load(bnd_idx + 2 * i_r + 1)
    else:
        i_n = i_r // (NSEG - 1)
        j = i_r % (NSEG - 1)
    i_b, bos, seq_len = _doc(cu_seqlens, i_n, T, IS_VARLEN)
    if REVERSE:
        i_s = j + 1
    else:
        i_s = j
    lo = i_s * SEGTOK
    n_tok = tl.minimum(seq_len - lo, SEGTOK)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < DK
    m_v = o_v < DV
    p_k = k + i_b * s_kb + (bos + lo) * s_kt + i_h * s_kh
    p_v = v + i_b * s_vb + (bos + lo) * s_vt + i_h * s_vh
    c_lo = 0
    c_hi = tl.cdiv(n_tok, BT)
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
        # weights lam^e with e > keep are below exp(-cut): forward, e = n_tok-1-t (skip the first chunks);
        # REVERSE, e = t+1 (skip the last ones)
        keep = tl.minimum(cut / tl.maximum(b_slope, 1e-30), 1073741824.0).to(tl.int32)
        keep = tl.where(cut > 0, keep, 1073741824)
        if REVERSE:
            c_hi = tl.minimum(c_hi, tl.cdiv(keep, BT))
        else:
            c_lo = tl.maximum(n_tok - 1 - keep, 0) // BT
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    for c in range(c_lo, c_hi):
        t = c * BT + o_t
        m_t = t < n_tok
        b_k = tl.load(p_k + t[:, None] * s_kt + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(p_v + t[:, None] * s_vt + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        if HAS_DECAY:
            if REVERSE:
                e = (t + 1).to(tl.float32)
            else:
                e = tl.where(m_t, n_tok - 1 - t, 0).to(tl.float32)
            w = tl.where(m_t, tl.exp(-b_slope * e), 0.0)
            b_v = (b_v * w[:, None]).to(b_k.dtype)
        b_s += tl.dot(tl.trans(b_k), b_v, input_precision=PREC)
    p_b = buf + (i_r.to(tl.int64) * H + i_h) * DK * DV + o_k[:, None] * DV + o_v[None, :]
    tl.store(p_b, b_s, mask=m_k[:, None] & m_v[None, :])


@triton.jit
def la2_segscan_kernel(
    buf, init, slope, cu_seqlens, boff, T, NSEG, SEGTOK,
    H: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DECAY: tl.constexpr, USE_INIT: tl.constexpr, REVERSE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Grid (N * H * cdiv(DK,BK) * cdiv(DV,BV),). In place, per sequence: buf[boundary] <- the true state crossing it
    (forward: entering segment j+1 = lam^SEGTOK (entering j) + own(j), from init = initial state at segment 0;
    REVERSE: gradient entering segment j from the right = lam^(tokens of j+1) (entering j+1) + own(j+1), from
    init = final-state gradient at the last segment). init is (N, H, DK, DV) fp32 contiguous."""
    NK = (DK + BK - 1) // BK
    NV = (DV + BV - 1) // BV
    pid = tl.program_id(0)
    i_v = pid % NV
    i_k = (pid // NV) % NK
    i_nh = pid // (NV * NK)
    i_n, i_h = i_nh // H, i_nh % H
    _, _, seq_len = _doc(cu_seqlens, i_n, T, IS_VARLEN)
    if IS_VARLEN:
        ns = tl.maximum(tl.cdiv(seq_len, SEGTOK), 1)
        rb = tl.load(boff + i_n)
    else:
        ns = NSEG
        rb = i_n * (NSEG - 1)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < DK) & (o_v[None, :] < DV)
    o_kv = o_k[:, None] * DV + o_v[None, :]
    b_c = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INIT:
        b_c += tl.load(init + i_nh.to(tl.int64) * DK * DV + o_kv, mask=m_kv, other=0.0)
    if HAS_DECAY:
        b_slope = tl.load(slope + i_h)
    nb = ns - 1
    for r in range(0, nb):
        if REVERSE:
            j = nb - 1 - r
            n_tok = tl.minimum(seq_len - (j + 1) * SEGTOK, SEGTOK)
        else:
            j = r
            n_tok = SEGTOK
        if HAS_DECAY:
            b_c = b_c * tl.exp(-b_slope * n_tok)
        p = buf + ((rb + j).to(tl.int64) * H + i_h) * DK * DV + o_kv
        b_c += tl.load(p, mask=m_kv, other=0.0)
        tl.store(p, b_c, mask=m_kv)
