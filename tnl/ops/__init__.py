"""The op layer (DESIGN.md, Contract 1): everything above it calls these, nothing above it imports the kernels.

    attention          lightning_attn (chunked, training and prefill), lightning_attn_step (one decoding token)
    norm               srms_norm
    loss               lm_head_loss, fused_linear_cross_entropy, IGNORE_INDEX
    sequence_parallel  lightning_attn_sp and the sharding helpers (one sequence over the ranks of a group)
    settings           configure / settings / using / backend: the process-wide kernel settings a run's config sets
    triton_backend     the one door into `tnl_kernels` (lazy import, Triton's interpreter on CPU tensors)
    linear_ce          the fused loss's arithmetic, shared by its autograd Function and its custom op
    custom_ops         what torch.compile sees of the LA2 op and the fused loss
    validate           the argument checks

Backend: Triton on CUDA tensors, the pure-torch path of tnl.reference on CPU, unless `configure(backend=...)` (a
run's `kernels.backend`) or the TNL_KERNEL_BACKEND override names one.
"""

from tnl.ops.attention import lightning_attn, lightning_attn_step
from tnl.ops.loss import IGNORE_INDEX, fused_linear_cross_entropy, lm_head_loss
from tnl.ops.norm import srms_norm
from tnl.ops.sequence_parallel import (
    SequenceContext,
    SequenceParallel,
    SequenceShard,
    lightning_attn_sp,
    new_sequence_parallel,
    sequence_parallel_loss,
    shard_range,
    shard_sequence,
)
from tnl.ops.settings import KernelSettings, backend, configure, settings, using
from tnl.ops.triton_backend import la2_table_note

__all__ = [
    "IGNORE_INDEX", "KernelSettings", "SequenceContext", "SequenceParallel", "SequenceShard", "backend", "configure",
    "fused_linear_cross_entropy", "la2_table_note", "lightning_attn", "lightning_attn_sp", "lightning_attn_step",
    "lm_head_loss", "new_sequence_parallel", "sequence_parallel_loss", "settings", "shard_range", "shard_sequence",
    "srms_norm", "using",
]
