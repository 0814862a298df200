"""Sequence parallelism for Lightning Attention (LASP-style): one sequence split over the ranks of a process group.

Each of the P ranks of `group` holds a contiguous chunk of the sequence (rank r: tokens [r L, (r+1) L) for equal
chunks). Linear attention needs only the running state S (H, D, E) from the left, so a rank's output is

    o_t = o_t(zero incoming state) + lam^(t+1) q_t S_in        (t counted from the chunk start)
    S_out = lam^L S_in + S_local                               (S_local: the chunk's own final state)

exactly (the decay is folded in as lam^(t+1); states are the TRUE state, fp32). The local LA2 call (all the
intra-chunk work) needs no S_in; only the cheap correction term does. So S_local is computed first by a cheap
O(L D E) pass, its all-gather is launched asynchronously, and LA2 runs while it is in flight.

How the states travel: one all-gather per layer of the pairs (S_local_r, a_r) with a_r = lam^L_r (or 0 when a
document boundary inside the chunk resets the state), followed by a local left-to-right scan over r' < r:

    S_in_0 = 0;  S_in_{r+1} = c_{r+1} (a_r S_in_r + S_local_r)       c_r = 0 when chunk r starts a new document

Why all-gather rather than a send/recv chain: one collective per layer instead of P - 1 dependent hops, no
ordering to get right (a chain of blocking send/recv deadlocks easily when ranks differ in timing, and its latency is
P - 1 serial message latencies), and it works on every backend (gloo has no reduce-scatter, but all-gather works).
Its cost is P state copies received per layer (P B H D E 4 bytes, e.g. 16 MB for the 7B's 32 x 128 x 128 heads at
P = 8, B = 1), small against the activations, and the scan itself is P tiny fused multiply-adds.
The backward is the mirror image: all-gather of the incoming-state gradients dS_in_r, then a right-to-left scan
gives each rank the gradient of its own S_local (which autograd pushes into its k and v through the local LA2 call).

Packed documents: `cu_seqlens` are the LOCAL boundaries of the rank's chunk (0, ..., L); `carry_in` says whether the
chunk's first token continues the document of the previous rank's last token. The incoming state only touches the
tokens before the first local boundary; a chunk with an internal boundary passes on only its last segment's state.

`shard_sequence` cuts a global batch (input_ids, targets, global cu_seqlens) into a rank's chunk with those flags and
the LRPE position of its first token.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from tnl.ops.attention import lightning_attn
from tnl.ops.linear_ce import IGNORE_INDEX

__all__ = ["SequenceContext", "SequenceParallel", "SequenceShard", "lightning_attn_sp", "new_sequence_parallel",
           "sequence_parallel_loss", "shard_range", "shard_sequence"]


class _StateExchange(torch.autograd.Function):
    """S_in of this rank from every rank's (S_local, a, c): all-gather + prefix scan; backward mirrors it."""

    @staticmethod
    def forward(ctx, s_local, a, c, group, work, parts):
        """`work`, `parts`: the all-gather `_start_exchange` launched (asynchronously) on (s_local, a, c)."""
        P, r = dist.get_world_size(group), dist.get_rank(group)
        shape = s_local.shape  # (Nb, H, D, E) fp32
        H = shape[1]
        work.wait()
        n = s_local.numel()
        b_all = [p[:n].view(shape) for p in parts]
        a_all = [p[n:n + H].view(1, H, 1, 1) for p in parts]
        c_all = [p[n + H] for p in parts]
        s_in = torch.zeros_like(s_local)
        for j in range(r):  # S_in_{j+1} = c_{j+1} (a_j S_in_j + S_local_j)
            s_in = c_all[j + 1] * (a_all[j] * s_in + b_all[j])
        ctx.group, ctx.rank, ctx.P = group, r, P
        ctx.save_for_backward(torch.stack(a_all), torch.stack(c_all))
        return s_in

    @staticmethod
    def backward(ctx, g):
        a_all, c_all = ctx.saved_tensors
        group, r, P = ctx.group, ctx.rank, ctx.P
        g = g.contiguous()
        parts = [torch.empty_like(g) for _ in range(P)]
        dist.all_gather(parts, g, group=group)
        # d S_out_j = c_{j+1} (dS_in_{j+1} + a_{j+1} d S_out_{j+1}), d S_out_{P-1} = 0; d S_local_r = d S_out_r.
        d_out = torch.zeros_like(g)
        for j in range(P - 2, r - 1, -1):
            d_out = c_all[j + 1] * (parts[j + 1] + a_all[j + 1] * d_out)
        return d_out, None, None, None, None, None


def _start_exchange(s_local, a, c, group):
    """Launch the all-gather of (S_local, a, c) without waiting (async_op): the intra-chunk work runs meanwhile."""
    packed = torch.cat([s_local.detach().reshape(-1), a.reshape(-1), c.reshape(1)])
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    # The caller keeps `packed` alive until the wait (an in-flight collective must not see its buffer reused).
    return dist.all_gather(parts, packed, group=group, async_op=True), parts, packed


def _chunk_state(k, v, log_lam, block=4096):
    """The chunk's own final state sum_t lam^(T-1-t) k_t^T v_t, (B, H, D, E) fp32, accumulated `block` tokens at a
    time (bounded fp32 temporaries). O(T D E): cheap next to LA2's intra-block work, and it is all the exchange needs,
    so the all-gather can start before the LA2 call."""
    B, T, H, D = k.shape
    state = torch.zeros(B, H, D, v.shape[-1], device=k.device, dtype=torch.float32)
    for s in range(0, T, block):
        e = min(T, s + block)
        w = torch.exp(log_lam[None, :] * torch.arange(T - 1 - s, T - 1 - e, -1, device=k.device,
                                                      dtype=torch.float32)[:, None])  # (e - s, H)
        state = state + torch.einsum("bthd,bthe->bhde", k[:, s:e].float() * w[None, :, :, None], v[:, s:e].float())
    return state


def _local_segments(cu_seqlens, T):
    """(length of the first segment, number of segments, start of the last segment) of the chunk; reads cu_seqlens
    on the host (as tnl.ops does)."""
    if cu_seqlens is None:
        return T, 1, 0
    cu = [int(x) for x in cu_seqlens.tolist()]
    return cu[1] - cu[0], len(cu) - 1, cu[-2]


def _correction(q, s_in, log_lam):
    """lam^(t+1) q_t S_in in fp32 for the chunk's first tokens: (B, n, H, D) x (B, H, D, E) -> (B, n, H, E)."""
    t = torch.arange(1, q.shape[1] + 1, device=q.device, dtype=torch.float32)
    decay = torch.exp(t[:, None] * log_lam[None, :])  # (n, H)
    return torch.einsum("bthd,bhde->bthe", q.float(), s_in) * decay[None, :, :, None]


def lightning_attn_sp(q, k, v, slope=None, *, group, cu_seqlens=None, carry_in=True):
    """Lightning attention over a sequence split into contiguous chunks across the ranks of `group` (module docstring).

    Args:
        q, k: (B, L, H, D), v: (B, L, H, E): this rank's chunk (the same B rows on every rank; equal or unequal L).
        slope: (H,) float32 >= 0 decay rates, or None for no decay (same on every rank).
        group: the sequence-parallel torch.distributed process group (None = the default group). A group of one
            rank is a plain `tnl.ops.lightning_attn` call.
        cu_seqlens: int32 (N+1,) LOCAL document boundaries of this chunk (0, ..., L) with B == 1, or None.
        carry_in: whether this chunk's first token continues the previous rank's last document (ignored on rank 0;
            always True without cu_seqlens: each row is one sequence).
    Returns:
        o (B, L, H, E) in q's dtype: exactly the rows [r L, (r+1) L) of the single-process op on the whole sequence.
    Differentiable in q, k, v; every rank must run forward and backward together (one all-gather each per call).
    """
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup or None, got {type(group).__name__}")
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return lightning_attn(q, k, v, slope, cu_seqlens=cu_seqlens)[0]
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a (B, L, H, D) tensor, got {getattr(q, 'shape', type(q))}")
    B, T, H, _ = q.shape
    n0, nseg, last = _local_segments(cu_seqlens, T)
    if slope is None:
        log_lam = torch.zeros(H, device=q.device, dtype=torch.float32)
    else:
        log_lam = -slope.detach().to(device=q.device, dtype=torch.float32)
    # Only the last segment's state leaves the chunk; it carries S_in through only when it spans the whole chunk.
    # It is computed first (recomputed in backward, so no fp32 copies are kept) and sent while LA2 runs.
    kl, vl = k[:, last:], v[:, last:]
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        s_local = checkpoint(_chunk_state, kl, vl, log_lam, use_reentrant=False)
    else:
        s_local = _chunk_state(kl, vl, log_lam)
    a = torch.exp(log_lam * T) if nseg == 1 else torch.zeros(H, device=q.device, dtype=torch.float32)
    c = torch.tensor(1.0 if (carry_in or cu_seqlens is None) else 0.0, device=q.device)
    work, parts, packed = _start_exchange(s_local, a, c, group)  # `packed` referenced until the wait below
    o0, _ = lightning_attn(q, k, v, slope, cu_seqlens=cu_seqlens)  # the intra-chunk work: needs no S_in
    s_in = _StateExchange.apply(s_local, a, c, group, work, parts)
    del packed
    # o_t += lam^(t+1) q_t S_in for the tokens before the first local boundary (fp32, then q's dtype).
    if torch.is_grad_enabled() and (q.requires_grad or s_in.requires_grad):  # keep no fp32 copy of q for backward
        corr = checkpoint(_correction, q[:, :n0], s_in, log_lam, use_reentrant=False)
    else:
        corr = _correction(q[:, :n0], s_in, log_lam)
    head = (o0[:, :n0].float() + corr).to(o0.dtype)
    return head if n0 == T else torch.cat([head, o0[:, n0:]], dim=1)


@dataclasses.dataclass
class SequenceShard:
    """One rank's chunk of a global sequence: [start, end) of the T tokens, its local cu_seqlens (or None), whether
    it continues the previous rank's document (carry_in) and the in-document position of its first token
    (first_pos, for LRPE: positions then continue exactly as on one rank)."""

    start: int
    end: int
    cu_seqlens: torch.Tensor | None
    carry_in: bool
    first_pos: int


def shard_sequence(T: int, rank: int, world: int, cu_seqlens: torch.Tensor | None = None) -> SequenceShard:
    """The chunk of rank `rank` of `world` for a sequence of T tokens (T must divide evenly), with `cu_seqlens` the
    GLOBAL int32 boundaries (0, ..., T) or None."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a sequence-parallel group of {world}")
    if T % world:
        raise ValueError(f"sequence length {T} is not divisible by the sequence-parallel size {world}")
    L = T // world
    return shard_range(rank * L, (rank + 1) * L, T, cu_seqlens)


def shard_range(start: int, end: int, T: int, cu_seqlens: torch.Tensor | None = None) -> SequenceShard:
    """The chunk [start, end) of a sequence of T tokens (any split; `shard_sequence` cuts equal ones)."""
    if not 0 <= start < end <= T:
        raise ValueError(f"chunk [{start}, {end}) is not a non-empty part of a sequence of {T} tokens")
    if cu_seqlens is None:
        return SequenceShard(start, end, None, True, start)
    cu = [int(x) for x in cu_seqlens.tolist()]
    if cu[0] != 0 or cu[-1] != T:
        raise ValueError(f"cu_seqlens must run from 0 to T = {T}, got {cu[0]} .. {cu[-1]}")
    doc_start = max(b for b in cu if b <= start)  # the start of the document holding token `start`
    inner = sorted({b - start for b in cu if start < b < end})
    local = torch.tensor([0, *inner, end - start], dtype=torch.int32, device=cu_seqlens.device)
    return SequenceShard(start, end, local, doc_start < start, start - doc_start)


@dataclasses.dataclass
class SequenceContext:
    """What a model needs to run one rank's chunk: the sequence-parallel group and the rank's SequenceShard."""

    group: dist.ProcessGroup | None
    shard: SequenceShard


def sequence_parallel_loss(local_mean: torch.Tensor, targets: torch.Tensor, group) -> torch.Tensor:
    """From this rank's mean token loss to the loss of the whole sequence: the VALUE is the mean over all the group's
    non-ignored targets (identical on every rank), the GRADIENT is this rank's token-loss sum / that global count, so
    the group's gradients sum to the one-rank gradient. (A data-parallel average over all P x DP ranks therefore
    needs the loss scaled by P before backward; the trainer does that.)"""
    count = (targets != IGNORE_INDEX).sum().to(local_mean.dtype)
    local_sum = local_mean * count.clamp(min=1)
    both = torch.stack([local_sum.detach(), count])
    dist.all_reduce(both, group=group)
    total, n = both[0], both[1].clamp(min=1)
    return (local_sum + (total - local_sum.detach())) / n


@dataclasses.dataclass
class SequenceParallel:
    """This rank's place in a P (sequence) x DP (data) grid: consecutive global ranks form one sequence-parallel
    group (rank = dp_rank * P + sp_rank, so a group shares a node when P divides the GPUs per node)."""

    group: dist.ProcessGroup | None
    size: int
    rank: int
    dp_rank: int
    dp_size: int

    def shard(self, T: int, cu_seqlens: torch.Tensor | None = None) -> SequenceShard:
        return shard_sequence(T, self.rank, self.size, cu_seqlens)


def new_sequence_parallel(size: int) -> SequenceParallel:
    """Create the sequence-parallel groups of `size` ranks (every rank must call this, in the same order)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if size < 1 or world % size:
        raise ValueError(f"parallel.sequence={size} must be >= 1 and divide the number of ranks ({world})")
    mine = None
    for dp in range(world // size):
        ranks = list(range(dp * size, (dp + 1) * size))
        group = dist.new_group(ranks) if size > 1 else None  # new_group is collective: all ranks create all groups
        if rank in ranks:
            mine = group
    return SequenceParallel(mine, size, rank % size, rank // size, world // size)
