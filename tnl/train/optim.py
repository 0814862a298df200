"""AdamW with the weight-decay split, the warmup + cosine learning rate, and the generated DeepSpeed config."""

from __future__ import annotations

import math
from typing import Any

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.adam import DeepSpeedCPUAdam
from deepspeed.ops.op_builder import CPUAdamBuilder

from tnl.checkpoint_format import param_groups  # the group order is part of the checkpoint format
from tnl.train.jit_builds import wait_for_build_lock


def build_optimizer(model: torch.nn.Module, optim_cfg: Any, device_type: str, cpu_offload: bool):
    """torch AdamW (fused on CUDA) for DeepSpeed to wrap; DeepSpeedCPUAdam when ZeRO offloads the step to the CPU."""
    groups = param_groups(model.named_parameters(), optim_cfg.weight_decay)
    kw = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    if cpu_offload and device_type == "cuda":
        wait_for_build_lock(CPUAdamBuilder.NAME)  # built on first use, under a lock a killed build leaves behind
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kw)
    fused = optim_cfg.fused if optim_cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **kw)


class WarmupCosine:
    """lr(step) = lr * step/warmup during warmup, then cosine from lr to lr * min_lr_ratio at max_steps.

    `apply(optimizer, step)` sets every group's lr for the 0-based optimizer step about to run. The only state is
    that step counter, which the trainer checkpoints, so resuming is exact.
    """

    def __init__(self, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float):
        self.lr, self.warmup, self.max_steps, self.min_ratio = lr, warmup_steps, max_steps, min_lr_ratio

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based optimizer step `step`."""
        if self.warmup > 0 and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.max_steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_ratio + (1.0 - self.min_ratio) * cosine)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def resolve_precision(precision: str, device_type: str) -> str:
    """'auto' -> bf16 where the accelerator supports it, else fp32."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if get_accelerator().is_bf16_supported() else "fp32"


def deepspeed_config(cfg: Any, world_size: int, precision: str) -> dict:
    """The DeepSpeed JSON config, derived from the trainer and deepspeed groups (train_batch_size from world size)."""
    t, d = cfg.trainer, cfg.deepspeed
    zero: dict[str, Any] = {"stage": d.stage}
    if d.stage >= 1:
        zero.update(reduce_bucket_size=d.reduce_bucket_size, contiguous_gradients=d.contiguous_gradients,
                    overlap_comm=d.overlap_comm)
    if d.stage in (1, 2):
        zero.update(allgather_bucket_size=d.allgather_bucket_size)
    if d.stage == 3:
        zero.update(stage3_prefetch_bucket_size=d.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=d.stage3_param_persistence_threshold,
                    stage3_gather_16bit_weights_on_model_save=False)
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if d.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    ds = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": d.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # progress is ours
        "wall_clock_breakdown": False,
    }
    for key, value in dict(d.extra).items():
        ds[key] = value
    return ds
