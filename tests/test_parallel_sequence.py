"""Sequence-parallel lightning attention (tnl.ops.sequence_parallel) on CPU with gloo, 2 and 4 ranks.

Every rank builds the same seeded full-sequence inputs, runs the single-process op on the whole sequence (the truth,
fp32) and lightning_attn_sp on its own chunk, and checks its rows of the output and of every gradient (q, k, v)
against the truth. Cases: decay and no decay, batched rows, packed documents crossing chunk boundaries (a boundary
exactly at a chunk start, a document spanning a whole chunk), unequal chunks. One spawn per world size runs all
cases (process start-up dominates the cost)."""


import pytest
import torch
from procs import spawn_gloo

from numerics import rel_err

TOL = 2e-5  # fp32: relative Frobenius error vs the single-process fp32 op on the full sequence
BF16_TOL = 2e-2  # bf16 inputs (rounded q, k, v, bf16 output) vs the same fp32 truth


def _cases(P):
    """(name, B, T, H, D, E, decay, global cu_seqlens or None, chunk bounds) for P ranks."""
    T = 12 * P + 5
    even = [i * T // P for i in range(P)] + [T]
    uneven = [0, 3] + [3 + i * (T - 3) // (P - 1) for i in range(1, P - 1)] + [T]
    b = even
    # boundaries: inside chunk 0, exactly at the start of chunk 1, and none in chunk P-1's interior when P > 2
    docs = sorted({0, b[0] + 4, b[1], b[1] + 2, T})
    return [
        ("decay", 2, T, 3, 8, 6, True, None, even),
        ("nodecay", 2, T, 3, 8, 6, False, None, even),
        ("uneven", 1, T, 2, 5, 7, True, None, uneven),
        ("packed", 1, T, 3, 8, 6, True, docs, even),
        ("packed_nodecay_uneven", 1, T, 2, 4, 4, False, [0, 2, T - 1, T], uneven),
        ("bf16_packed", 1, T, 2, 8, 8, True, docs, even),
    ]


def _run_case(rank, P, case):
    from tnl.ops import lightning_attn, lightning_attn_sp, shard_range

    name, B, T, H, D, E, decay, docs, bounds = case
    g = torch.Generator().manual_seed(1234 + len(name))
    q = torch.randn(B, T, H, D, generator=g)
    k = torch.randn(B, T, H, D, generator=g) * 0.5
    v = torch.randn(B, T, H, E, generator=g)
    w = torch.randn(B, T, H, E, generator=g)  # loss = sum(o * w): a random output gradient
    slope = (torch.rand(H, generator=g) * 0.5 + 0.05) if decay else None
    cu = None if docs is None else torch.tensor(docs, dtype=torch.int32)

    full = [x.clone().requires_grad_() for x in (q, k, v)]
    o_ref, _ = lightning_attn(*full, slope, cu_seqlens=cu)
    (o_ref * w).sum().backward()

    s, e = bounds[rank], bounds[rank + 1]
    shard = shard_range(s, e, T, cu)
    loc = [x[:, s:e].clone().requires_grad_() for x in (q, k, v)]
    if name.startswith("bf16"):  # bf16 inputs: fp32 states inside, output in bf16; checked against the fp32 truth
        loc = [x.detach().bfloat16().requires_grad_() for x in loc]
    o = lightning_attn_sp(*loc, slope, group=None, cu_seqlens=shard.cu_seqlens, carry_in=shard.carry_in)
    assert o.dtype == loc[0].dtype
    (o.float() * w[:, s:e]).sum().backward()
    errs = {"o": rel_err(o, o_ref[:, s:e])}
    for nm, a, b in zip("qkv", loc, full):
        errs["d" + nm] = rel_err(a.grad, b.grad[:, s:e])
    tol = BF16_TOL if name.startswith("bf16") else TOL
    bad = {k_: v_ for k_, v_ in errs.items() if not v_ < tol}
    assert not bad, f"{name} rank {rank}/{P}: relative errors {bad} (tolerance {tol})"
    if rank > 0 and shard.carry_in:  # the incoming state matters: dropping it must be detected
        o_alone, _ = lightning_attn(*(x.detach().float() for x in loc), slope, cu_seqlens=shard.cu_seqlens)
        assert rel_err(o_alone, o_ref[:, s:e]) > 1e-3, f"{name}: chunk {rank} does not depend on its left context"


def _worker(rank, P):
    torch.manual_seed(0)
    for case in _cases(P):
        _run_case(rank, P, case)


@pytest.mark.parametrize("P", [2, 4])
def test_lightning_attn_sp_matches_single_process(P):
    spawn_gloo(_worker, P)


def test_one_rank_is_the_plain_op():
    from tnl.ops import lightning_attn, lightning_attn_sp

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 9, 2, 4, generator=g) for _ in range(3))
    slope = torch.tensor([0.1, 0.3])
    assert rel_err(lightning_attn_sp(q, k, v, slope, group=None), lightning_attn(q, k, v, slope)[0]) < 1e-7


def test_shard_sequence_flags():
    from tnl.ops import shard_sequence

    cu = torch.tensor([0, 3, 8, 12], dtype=torch.int32)
    s0, s1, s2 = (shard_sequence(12, r, 3, cu) for r in range(3))
    assert (s0.start, s0.end, s0.cu_seqlens.tolist(), s0.first_pos) == (0, 4, [0, 3, 4], 0)
    assert (s1.cu_seqlens.tolist(), s1.carry_in, s1.first_pos) == ([0, 4], True, 1)
    assert (s2.cu_seqlens.tolist(), s2.carry_in, s2.first_pos) == ([0, 4], False, 0)
    assert shard_sequence(12, 2, 3).first_pos == 8
    with pytest.raises(ValueError, match="not divisible"):
        shard_sequence(10, 0, 3)
    with pytest.raises(ValueError, match="rank 3"):
        shard_sequence(12, 3, 3)
