"""Parallelism beyond data parallel: sequence parallelism for Lightning Attention (tnl.parallel.sequence)."""

from tnl.parallel.sequence import (
    SequenceContext,
    SequenceParallel,
    SequenceShard,
    lightning_attn_sp,
    new_sequence_parallel,
    sequence_parallel_loss,
    shard_range,
    shard_sequence,
)

__all__ = ["SequenceContext", "SequenceParallel", "SequenceShard", "lightning_attn_sp", "new_sequence_parallel",
           "sequence_parallel_loss", "shard_range", "shard_sequence"]
