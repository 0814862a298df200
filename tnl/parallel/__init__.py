"""Parallelism beyond data parallel: sequence parallelism for Lightning Attention (tnl.parallel.sequence)."""

from tnl.parallel.sequence import (
    SequenceContext,
    SequenceShard,
    lightning_attn_sp,
    sequence_parallel_loss,
    shard_range,
    shard_sequence,
)

__all__ = ["SequenceContext", "SequenceShard", "lightning_attn_sp", "sequence_parallel_loss", "shard_range",
           "shard_sequence"]
