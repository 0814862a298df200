"""Pieces shared by the TNL and LLaMA language models: output type, init, input checks, document positions, the
activation-checkpoint policy. (The LM-head loss is an op: tnl.ops.lm_head_loss.)"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from tnl.ops import custom_ops


@dataclasses.dataclass
class LMOutput:
    """Training-form output: `loss` (mean over non-ignored targets, or None) and `logits` ((B, T, V) or None)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class Linear(nn.Linear):
    """Bias-free nn.Linear initialised N(0, std) inside its own constructor (the released init).

    Initialising in the constructor matters for ZeRO-3: deepspeed.zero.Init partitions every module right after
    its __init__, so an init applied later by a parent module would only touch empty shards."""

    def __init__(self, in_features: int, out_features: int, std: float):
        self.std = std
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)


class Embedding(nn.Embedding):
    """nn.Embedding initialised N(0, std) inside its own constructor (see Linear)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float):
        self.std = std
        super().__init__(num_embeddings, embedding_dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.std)


def check_inputs(input_ids: torch.Tensor, targets: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> None:
    """Validate the training-form arguments (shapes, dtypes, cu_seqlens layout) with one clear error."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (B, T) tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64, got {input_ids.dtype}")
    if targets is not None and targets.shape != input_ids.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {tuple(input_ids.shape)}")
    if cu_seqlens is not None:
        if input_ids.shape[0] != 1:
            raise ValueError(f"cu_seqlens needs batch size 1 (documents packed along T), got B={input_ids.shape[0]}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with N+1 >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype != torch.int32:
            raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")


def doc_positions(cu_seqlens: torch.Tensor, T: int, device) -> torch.Tensor:
    """Position of every token inside its own document (restarting at 0 at each cu_seqlens boundary): (T,) int64."""
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    idx = torch.arange(T, device=device)
    doc = torch.searchsorted(cu[1:], idx, right=True).clamp(max=cu.numel() - 2)
    return idx - cu[doc]


@functools.cache
def _saved_ops() -> frozenset:
    aten = torch.ops.aten
    return frozenset({aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
                      custom_ops.saved_op()})


def _save_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_elementwise(fn, *args, **kwargs):
    """fn(*args, **kwargs) under selective activation checkpointing: the outputs of matmuls and of the LA2 op are
    kept for backward, everything else (norms, activations, gates, products, casts) is recomputed there. Meant for
    torch.compile'd blocks, where inductor fuses the recomputation into the backward's kernels; eager it would only
    add launches. The inputs of fn are kept as checkpoint inputs."""
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=functools.partial(create_selective_checkpoint_contexts, _save_matmuls), **kwargs)
