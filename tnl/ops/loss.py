"""The LM-head loss: mean next-token cross-entropy of `hidden @ weight.T`, chunked, fused with its gradients where
the Triton backend serves the training step.

`lm_head_loss` picks one of two paths (the `fused_loss` setting, tnl.ops.settings):
- fused: `fused_linear_cross_entropy`, whose gradients are computed inside its forward. Per chunk of `chunk_size`
  tokens:
      logits = hidden_c @ W^T                      one matmul, in the autocast / input dtype
      ce_grad_inplace(logits, targets_c)           Triton: row losses, logits overwritten by softmax - onehot
      dhidden_c = dlogits @ W,  dW += dlogits^T @ hidden_c   (dW accumulated in fp32)
  The autograd.Function keeps dhidden (N, D) and dW (V, D), scaled by 1/count at the end, and its backward only
  multiplies them by the incoming scalar gradient. Three vocab-sized matmuls per chunk instead of four, and no fp32
  (tokens, V) log_softmax in forward or backward. Memory: N x D + V x D plus one (chunk, V) block of logits, never
  N x V. The same idea as liger-kernel's fused linear cross-entropy. It took tnl_385m's training step from 119.7K
  to 148.8K tokens/s on an H100 (bench_train, 32K tokens per step; benchmarks/NOTES.md).
- torch: fp32 log-softmax per chunk, each chunk checkpointed (recomputed in backward: 4 vocab-sized matmuls).
  Taken for evaluation and no-grad calls, fp64, the torch backend, and `fused_loss=off` (a ZeRO-3 run's
  `trainer.fused_loss=auto` resolves to off: its gathered weight is not the tensor the kernel's dW would reach).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tnl.ops import custom_ops, linear_ce, settings
from tnl.ops.linear_ce import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "fused_linear_cross_entropy", "lm_head_loss", "use_fused_ce"]

_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype F.linear(hidden, weight) would compute in: the autocast dtype when autocast is on (fp64 is never
    autocast), else the inputs' dtype."""
    dev = hidden.device.type
    if hidden.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return hidden.dtype


def use_fused_ce(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether lm_head_loss takes the fused path for these inputs (see the module docstring)."""
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return False  # eval / no-grad: nothing to fuse, the plain chunked loss is cheaper
    mode = settings.get("fused_loss")
    if mode == "off" or compute_dtype(hidden, weight) not in _KERNEL_DTYPES:
        return False
    if mode == "on":
        return True
    return settings.backend(hidden.device) == "triton"


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def lm_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Mean next-token cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX = no loss), in fp32
    (fp64 for fp64 inputs).

    The tokens are processed `chunk_size` at a time, so the (tokens, vocab) logits of a long sequence never exist all
    at once (64000 x 16K tokens would be 4 GB in fp32); fused or torch path as the module docstring says.
    hidden: (B, T, D); weight: (V, D); targets: (B, T) int64. All targets ignored: 0, still differentiable.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if use_fused_ce(h, weight):
        return fused_linear_cross_entropy(h, weight, t, chunk_size)
    count = (t != IGNORE_INDEX).sum()
    total = h.new_zeros((), dtype=torch.float64 if h.dtype == torch.float64 else torch.float32)
    for s in range(0, h.shape[0], chunk_size):
        hs, ts = h[s:s + chunk_size], t[s:s + chunk_size]
        if torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_ce_sum, hs, weight, ts, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(hs, weight, ts)
    return total / count.clamp(min=1).to(total.dtype)


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, cdtype, kernel):
        need_h, need_w = ctx.needs_input_grad[:2]
        loss, dh, dw = linear_ce.fused_forward(hidden, weight, targets, chunk_size, cdtype, kernel, need_h, need_w)
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        gh, gw = linear_ce.scale_saved_grads(dh, dw, grad_loss, ctx.dtypes)
        return gh, gw, None, None, None, None


def _check(hidden, weight, targets, chunk_size):
    for x, name in ((hidden, "hidden"), (weight, "weight"), (targets, "targets")):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be (N, D) and weight (V, D), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden's D = {hidden.shape[1]} != weight's D = {weight.shape[1]}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (V >= 1)")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must have shape (N,) = ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 or int32, got {targets.dtype}")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError(f"hidden, weight and targets must share a device, got {hidden.device}, {weight.device}, "
                         f"{targets.device}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    cdtype = compute_dtype(hidden, weight)
    if cdtype not in _KERNEL_DTYPES:
        raise TypeError(f"the fused loss computes in bfloat16, float16 or float32, got {cdtype}")
    if not torch.is_autocast_enabled(hidden.device.type) and weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} != hidden dtype {hidden.dtype} (outside autocast)")
    return cdtype


def _fused_call(hidden, weight, targets, chunk_size, cdtype):
    kernel = linear_ce.ce_kernel(hidden.device)
    return _FusedLinearCE.apply(hidden, weight, targets, chunk_size, cdtype, kernel)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, gradients computed in forward.

    Args:
        hidden: `[N, D]`, bf16/fp16/fp32 (fp32 master copies under autocast are fine: the matmuls run in the
            autocast dtype, like F.linear).
        weight: `[V, D]`, hidden's dtype outside autocast.
        targets: `[N]` int64/int32; IGNORE_INDEX (-100) ignores a token. A target outside [0, V) makes the loss
            NaN (no host sync).
        chunk_size: tokens per chunk; one (chunk_size, V) block of logits exists at a time.

    Returns the fp32 loss (0-d), the mean over non-ignored targets (0 when all are ignored, still differentiable).
    Gradients come back in hidden's and weight's dtypes. Always the Triton kernel (interpreted on CPU tensors);
    `lm_head_loss` is the entry point that picks this or the torch path. Under torch.compile it is one custom op
    of the graph (tnl.ops.custom_ops), whose backward scales the kept gradients."""
    cdtype = _check(hidden, weight, targets, chunk_size)
    if torch.compiler.is_compiling():
        return custom_ops.fused_linear_ce(hidden, weight, targets, chunk_size, cdtype)
    return _fused_call(hidden, weight, targets, chunk_size, cdtype)
