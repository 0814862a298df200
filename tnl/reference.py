"""Plain-torch Lightning Attention: the truth the kernels are tested against, and the CPU path of tnl.ops.

Three forms of the same op (Contract 1, DESIGN.md): o_t = q_t S_t with S_t = lam S_{t-1} + k_t^T v_t, lam = exp(-slope),
the state resetting at every document boundary of `cu_seqlens`:

- `lightning_attn_quadratic`: o = ((q k^T) * M) v with M_ts = lam^(t-s) for s <= t, plus lam^(t+1) q_t S_0.
  O(T^2); obviously right; computed in the dtype it is given (tests pass float64).
- `lightning_attn_recurrent`: the step recurrence above, one token at a time. O(T) Python steps; the definition.
- `lightning_attn_chunked`: the fast one, Lightning Attention-2's split in pure torch: a masked product inside each
  chunk of 64 tokens, and the state carried across chunks. Vectorised over batch, documents and chunks (the carry is a
  log-depth scan), differentiable through autograd, fp32 accumulation. tnl.ops runs it on CPU.

All three take q, k (B, T, H, D), v (B, T, H, E), slope (H,) or None, initial_state (N, H, D, E) or None and
cu_seqlens (N+1,) or None (with B == 1), and return (o, final_state), final_state (N, H, D, E) always (callers drop
it). The slope is never differentiated. Also here: `lightning_attn_step` (one decoding token) and `srms_norm`.
No argument checking here: tnl.ops validates.
"""

import torch


def _documents(B, T, cu_seqlens):
    """(batch row, start, end) of every sequence: the B rows, or the documents packed in row 0."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    cu = [int(x) for x in cu_seqlens.tolist()]
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


def _log_decay(slope, H, device, dtype):
    """-slope (= log lam) as a (H,) tensor; zeros (lam = 1) when slope is None. Never differentiated."""
    if slope is None:
        return torch.zeros(H, device=device, dtype=dtype)
    return -slope.detach().to(device=device, dtype=dtype)


def _initial(initial_state, n, H, D, E, device, dtype):
    if initial_state is None:
        return torch.zeros(H, D, E, device=device, dtype=dtype)
    return initial_state[n].to(dtype)


def lightning_attn_quadratic(q, k, v, slope=None, initial_state=None, cu_seqlens=None):
    """Masked quadratic form, one document at a time, in q's dtype (float64 in tests)."""
    B, T, H, D = q.shape
    E = v.shape[-1]
    dt, dev = q.dtype, q.device
    logl = _log_decay(slope, H, dev, dt)
    o = torch.zeros(B, T, H, E, device=dev, dtype=dt)
    finals = []
    for n, (b, s, e) in enumerate(_documents(B, T, cu_seqlens)):
        L = e - s
        qd, kd, vd = (x[b, s:e].to(dt).transpose(0, 1) for x in (q, k, v))  # (H, L, D|E)
        t = torch.arange(L, device=dev, dtype=dt)
        diff = t[:, None] - t[None, :]  # t - s
        causal = diff >= 0
        M = torch.where(causal, torch.exp(logl[:, None, None] * diff.clamp(min=0)), torch.zeros((), dtype=dt))
        od = ((qd @ kd.transpose(1, 2)) * M) @ vd  # (H, L, E)
        S0 = _initial(initial_state, n, H, D, E, dev, dt)
        od = od + torch.exp(logl[:, None, None] * (t + 1)[None, :, None]) * (qd @ S0)
        o[b, s:e] = od.transpose(0, 1)
        # final state: lam^L S_0 + sum_s lam^(L-1-s) k_s^T v_s
        w = torch.exp(logl[:, None] * (L - 1 - t)[None, :])  # (H, L)
        finals.append(torch.exp(logl * L)[:, None, None] * S0 + (kd * w[..., None]).transpose(1, 2) @ vd)
    return o, torch.stack(finals)


def lightning_attn_recurrent(q, k, v, slope=None, initial_state=None, cu_seqlens=None):
    """Step recurrence S_t = lam S_{t-1} + k_t^T v_t, o_t = q_t S_t, in q's dtype (float64 in tests)."""
    B, T, H, D = q.shape
    E = v.shape[-1]
    dt, dev = q.dtype, q.device
    lam = torch.exp(_log_decay(slope, H, dev, dt))[:, None, None]
    rows = [[None] * T for _ in range(B)]
    finals = []
    for n, (b, s, e) in enumerate(_documents(B, T, cu_seqlens)):
        S = _initial(initial_state, n, H, D, E, dev, dt)
        for t in range(s, e):
            S = lam * S + k[b, t].to(dt)[:, :, None] * v[b, t].to(dt)[:, None, :]
            rows[b][t] = torch.einsum("hd,hde->he", q[b, t].to(dt), S)
        finals.append(S)
    o = torch.stack([torch.stack(r) for r in rows]) if T > 0 else torch.zeros(B, 0, H, E, device=dev, dtype=dt)
    return o, torch.stack(finals)


def lightning_attn_step(q, k, v, slope, state):
    """One decoding step for (B, H, D|E) inputs and a (B, H, D, E) state: S' = lam S + k^T v, o = q S'.

    Computed in float32 (float64 if given); returns (o in q's dtype, S' in the compute dtype)."""
    B, H, D = q.shape
    E = v.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    lam = torch.exp(_log_decay(slope, H, q.device, dt))[None, :, None, None]
    if state is None:
        state = torch.zeros(B, H, D, E, device=q.device, dtype=dt)
    S = lam * state.to(dt) + k.to(dt)[..., :, None] * v.to(dt)[..., None, :]
    o = torch.einsum("bhd,bhde->bhe", q.to(dt), S)
    return o.to(q.dtype), S


def _shift(x, d, fill):
    """x shifted by d along dim 0 (x'[c] = x[c-d]), the first d rows filled with `fill`."""
    pad = torch.full((d, *x.shape[1:]), fill, device=x.device, dtype=x.dtype)
    return torch.cat([pad, x[:-d]], 0)


def _scan(a, b):
    """Inclusive scan of x_c = a_c x_{c-1} + b_c (x_{-1} = 0) in ceil(log2 n) vectorised steps (Hillis-Steele).

    a: (n, H) per-chunk decay (0 where a document starts), b: (n, H, D, E). Returns x: (n, H, D, E)."""
    d = 1
    while d < a.shape[0]:
        b = b + a[:, :, None, None] * _shift(b, d, 0.0)
        a = a * _shift(a, d, 1.0)
        d *= 2
    return b


def _layout(B, T, cu_seqlens, C, device):
    """Per-document chunk layout: each document padded at its end to a multiple of C.

    Returns (gather, chunk_len, first, doc_of, last_chunk): gather (n*C,) indexes into the flat (B*T + 1) token rows
    (row B*T is the zero row used for padding), or None when no padding is needed; chunk_len (n,) valid tokens per
    chunk; first (n,) whether the chunk starts a document; doc_of (n,) its document; last_chunk (N,) index of each
    document's last chunk (-1 for empty documents)."""
    docs = _documents(B, T, cu_seqlens)
    lengths = torch.tensor([e - s for _, s, e in docs], dtype=torch.long)
    starts = torch.tensor([b * T + s for b, s, _ in docs], dtype=torch.long)
    nchunks = (lengths + C - 1) // C
    n = int(nchunks.sum())
    doc_of = torch.repeat_interleave(torch.arange(len(docs)), nchunks)
    chunk_start = torch.cumsum(nchunks, 0) - nchunks  # first chunk index of each document
    j = torch.arange(n) - chunk_start[doc_of]  # chunk index within its document
    chunk_len = (lengths[doc_of] - j * C).clamp(max=C)
    last_chunk = torch.where(nchunks > 0, chunk_start + nchunks - 1, torch.full_like(nchunks, -1))
    if bool((lengths % C == 0).all()):
        gather = None  # every document is whole chunks: the flat token order is already the chunk order
    else:
        pos = j[:, None] * C + torch.arange(C)[None, :]  # (n, C) position within the document
        valid = pos < lengths[doc_of][:, None]
        gather = torch.where(valid, starts[doc_of][:, None] + pos, torch.full_like(pos, B * T)).reshape(-1)
    dev = dict(device=device)
    return (None if gather is None else gather.to(**dev), chunk_len.to(**dev), (j == 0).to(**dev), doc_of.to(**dev),
            last_chunk.to(**dev))


def lightning_attn_chunked(q, k, v, slope=None, initial_state=None, cu_seqlens=None, chunk_size=64):
    """Lightning Attention-2 in pure torch: intra-chunk masked product + inter-chunk state (see module docstring).

    Accumulates in float32 (float64 when given float64). Returns o in q's dtype and the final states (N, H, D, E) in
    the accumulation dtype."""
    B, T, H, D = q.shape
    E = v.shape[-1]
    C = chunk_size
    dev = q.device
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    gather, chunk_len, first, doc_of, last_chunk = _layout(B, T, cu_seqlens, C, dev)
    n = chunk_len.shape[0]

    def chunks(x):  # (B, T, H, X) -> (n, H, C, X) contiguous, in the accumulation dtype
        flat = x.reshape(B * T, H, x.shape[-1]).to(dt)
        if gather is not None:
            flat = torch.cat([flat, flat.new_zeros(1, H, x.shape[-1])])[gather]
        return flat.reshape(n, C, H, x.shape[-1]).transpose(1, 2).contiguous()

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    logl = _log_decay(slope, H, dev, dt)[:, None]  # (H, 1)
    i = torch.arange(C, device=dev, dtype=dt)
    diff = i[:, None] - i[None, :]
    zero = torch.zeros((), dtype=dt, device=dev)
    # intra-chunk: (q k^T * lam^(i-j) [j <= i]) v
    mask = torch.where(diff >= 0, torch.exp(logl[:, :, None] * diff.clamp(min=0)), zero)  # (H, C, C)
    o = ((qc @ kc.transpose(-1, -2)) * mask) @ vc  # (n, H, C, E)
    # per-chunk state increment: sum_j lam^(len-1-j) k_j^T v_j over the chunk's valid tokens
    ln = chunk_len.to(dt)
    expo = ln[:, None] - 1 - i[None, :]  # (n, C)
    w = torch.where(expo[:, None, :] >= 0, torch.exp(logl[None] * expo.clamp(min=0)[:, None, :]), zero)  # (n, H, C)
    kv = (kc * w[..., None]).transpose(-1, -2) @ vc  # (n, H, D, E)
    decay = torch.exp(logl[None, :, 0] * ln[:, None])  # (n, H): lam^len across a chunk
    starts = first.nonzero()[:, 0]  # chunk index where each non-empty document starts
    S0 = None if initial_state is None else initial_state.to(dt)[doc_of[starts]]
    if S0 is not None:
        kv = kv.index_add(0, starts, decay[starts][..., None, None] * S0)
    # end-of-chunk states; a document's first chunk does not see the previous chunk
    ends = _scan(torch.where(first[:, None], zero, decay), kv)
    # state entering each chunk: previous end state, or the document's initial state
    start = _shift(ends, 1, 0.0)
    start = start.index_copy(0, starts, S0 if S0 is not None else start.new_zeros(len(starts), H, D, E))
    # inter-chunk: lam^(i+1) q_i S_start
    o = o + (qc * torch.exp(logl * (i + 1))[..., None]) @ start
    # back to (B, T, H, E)
    o = o.transpose(1, 2).reshape(n * C, H, E)
    if gather is not None:
        pos = torch.full((B * T + 1,), -1, dtype=torch.long, device=dev)
        pos[gather] = torch.arange(n * C, device=dev)
        o = o[pos[: B * T]]
    o = o.reshape(B, T, H, E).to(q.dtype)
    # final states: last chunk's end state; empty documents keep their initial state
    final = ends[last_chunk.clamp(min=0)]
    empty = (last_chunk < 0)[:, None, None, None]
    final = torch.where(empty, initial_state.to(dt) if initial_state is not None else zero, final)
    return o, final


def srms_norm(x, eps=1e-6):
    """y = x * rsqrt(mean(x^2, -1) + eps), computed in float32 (float64 if given), returned in x's dtype."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(dt)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
