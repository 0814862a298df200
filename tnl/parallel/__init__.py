"""Parallelism beyond data parallel: sequence parallelism for Lightning Attention (tnl.parallel.sequence)."""

from tnl.parallel.sequence import SequenceShard, lightning_attn_sp, shard_range, shard_sequence

__all__ = ["SequenceShard", "lightning_attn_sp", "shard_range", "shard_sequence"]
