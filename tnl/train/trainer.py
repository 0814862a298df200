"""The training loop: a short list of steps; metrics, checkpoints and loggers hang off it as callbacks.

One optimizer step = grad_accum micro batches through the DeepSpeed engine. A step whose loss (on any rank) or
gradients are not finite is not applied and is counted; max_bad_steps of them in a row abort the run.
"""

from __future__ import annotations

import logging
import math
import time
import types
from dataclasses import dataclass, field
from typing import Any

import torch

from tnl.ops import SequenceContext
from tnl.train import dist
from tnl.train.metrics import Throughput, mfu

log = logging.getLogger("tnl.train")


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


@dataclass
class TrainState:
    """Counters that are checkpointed with the engine (the LR schedule is a function of `step`)."""

    step: int = 0  # optimizer steps done (applied or skipped)
    tokens: int = 0  # training tokens consumed, all ranks
    skipped: int = 0  # steps not applied because of a non-finite loss/gradient
    bad_in_a_row: int = 0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, sd: dict) -> None:
        self.__dict__.update(sd)


class StepGate:
    """Lets the trainer veto the optimizer update of a step, whatever DeepSpeed wrapper calls the inner optimizer.

    DeepSpeed calls the client optimizer's step() at the accumulation boundary (per parameter group for ZeRO-1/2);
    the gate drops that call when the step's losses (set by the trainer) or its gradients (after DeepSpeed's
    reduction and clipping) are not finite on any rank. Checking here, not before backward, costs no extra sync.

    The gradients are judged by `grad_norm` when it gives a tensor: the global norm DeepSpeed computed for clipping
    just before this call (ZeRO-1/2; DeepSpeed marks a non-finite gradient there with -1 or inf), so the gate reads
    one scalar instead of every gradient element. Otherwise (no norm: ZeRO-0/3, no clipping) each gradient tensor
    is checked with isfinite().all(), stacked into one flag (one device sync, not one per tensor).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, grad_norm=None):
        self.optimizer, self.device = optimizer, device
        self.grad_norm = grad_norm  # () -> this step's global gradient norm (tensor) or None; see Trainer
        self.losses: torch.Tensor | None = None  # this step's micro-batch losses on this rank
        self.vetoed = False
        inner = optimizer.step

        def gated_step(opt, *args, **kwargs):
            norm = self.grad_norm() if self.grad_norm is not None else None
            if isinstance(norm, torch.Tensor):
                flags = [(torch.isfinite(norm) & (norm >= 0)).all().to(self.device)]
            else:
                flags = [torch.isfinite(p.grad).all().to(self.device) for g in opt.param_groups for p in g["params"]
                         if p.grad is not None]
            if self.losses is not None:
                flags.append(torch.isfinite(self.losses).all().to(self.device))
            finite = bool(torch.stack(flags).all()) if flags else True  # one device sync
            if not dist.all_true(finite, self.device):
                self.vetoed = True
                return None
            return inner(*args, **kwargs)

        optimizer.step = types.MethodType(gated_step, optimizer)


def zero_clip_norm(engine):
    """() -> the global gradient norm that DeepSpeed's ZeRO-1/2 optimizer computed for this step before calling the
    client optimizer, or None where the engine has no such optimizer (ZeRO-0/3: StepGate checks every gradient).
    Read from DeepSpeedZeroOptimizer._global_grad_norm, which its step() sets (or resets to None) every step before
    the client's step; any other wrapper class is not trusted."""
    zero = getattr(engine, "optimizer", None)
    if type(zero).__name__ != "DeepSpeedZeroOptimizer":
        return None
    return lambda: getattr(zero, "_global_grad_norm", None)


@dataclass
class Trainer:
    engine: Any  # deepspeed.DeepSpeedEngine
    gate: StepGate
    schedule: Any  # WarmupCosine
    train_loader: Any  # tnl.data.PackedLoader
    make_val_loader: Any  # () -> finite iterable of batches, or None
    cfg: Any  # the trainer section of the config (TrainerConfig)
    device: torch.device
    world_size: int
    flops_per_token: float
    peak_flops: float | None
    callbacks: list = field(default_factory=list)  # objects with on_log(step, record) / close()
    on_save: Any = None  # (trainer) -> None, called every save_every steps and at the end
    sequence_parallel: Any = None  # tnl.ops.SequenceParallel when parallel.sequence > 1
    profiler: Any = None  # tnl.train.profile.StepProfiler (trainer.profile_steps), on rank 0
    state: TrainState = field(default_factory=TrainState)

    def __post_init__(self):
        t = self.cfg
        sp_size = self.sequence_parallel.size if self.sequence_parallel is not None else 1
        self.tokens_per_step = t.micro_batch_size * t.grad_accum * t.seq_len * (self.world_size // sp_size)
        self.batches = iter(self.train_loader)
        self.throughput = Throughput()
        if self.gate.grad_norm is None:
            self.gate.grad_norm = zero_clip_norm(self.engine)

    # -- one step -------------------------------------------------------------------------------------------------
    def _forward(self, batch: dict) -> torch.Tensor:
        sp, kwargs = self.sequence_parallel, {}
        if sp is not None:  # every rank of the group got the same batch: keep this rank's chunk of the sequence
            ids, targets, cu = batch["input_ids"], batch["targets"], batch.get("cu_seqlens")
            if cu is not None:
                ids, targets = ids.reshape(1, -1), targets.reshape(1, -1)
            shard = sp.shard(ids.shape[1], cu)
            batch = {"input_ids": ids[:, shard.start:shard.end].contiguous(),
                     "targets": targets[:, shard.start:shard.end].contiguous()}
            if shard.cu_seqlens is not None:
                batch["cu_seqlens"] = shard.cu_seqlens
            kwargs["sp"] = SequenceContext(sp.group, shard)
        if self.device.type == "cuda":  # pinned host memory makes the copies asynchronous
            batch = {k: v.pin_memory() for k, v in batch.items()}
        ids = batch["input_ids"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        cu = batch.get("cu_seqlens")
        if cu is not None:  # documents packed into one row: (B, T) -> (1, B*T)
            ids, targets, cu = ids.reshape(1, -1), targets.reshape(1, -1), cu.to(self.device)
        out = self.engine(ids, targets=targets, cu_seqlens=cu, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.loss  # LossOnly (ZeRO-3) returns the loss itself

    def train_step(self) -> dict:
        """grad_accum forward/backward passes and (unless vetoed) one optimizer update; returns the step's record."""
        lr = self.schedule.apply(self.gate.optimizer, self.state.step)
        self.gate.losses, self.gate.vetoed = None, False
        losses = []
        self.engine.train()
        for micro in range(self.cfg.grad_accum):
            loss = self._forward(next(self.batches))
            losses.append(loss.detach().float())
            if micro == self.cfg.grad_accum - 1:  # the gate sees them when the boundary step runs
                self.gate.losses = torch.stack(losses)
            # sequence parallel: DeepSpeed averages gradients over all P x DP ranks, the group's gradients must sum
            self.engine.backward(loss * self.sequence_parallel.size if self.sequence_parallel is not None else loss)
            self.engine.step()
        loss = dist.mean(torch.stack(losses).mean().item(), self.device)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        finite_norm = grad_norm is None or math.isfinite(grad_norm)
        skipped = self.gate.vetoed or not math.isfinite(loss) or not finite_norm
        self.state.step += 1
        self.state.tokens += self.tokens_per_step
        if skipped:
            self.state.skipped += 1
            self.state.bad_in_a_row += 1
            log.warning("step %d skipped: loss %s, grad_norm %s (%d skipped so far)", self.state.step, loss, grad_norm,
                        self.state.skipped)
            if self.state.bad_in_a_row >= self.cfg.max_bad_steps:
                raise NonFiniteError(f"{self.state.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                                     f"(last: step {self.state.step}, loss {loss}, grad_norm {grad_norm}); "
                                     "lower optim.lr, check the data, or resume from an earlier checkpoint")
        else:
            self.state.bad_in_a_row = 0
        return {"step": self.state.step, "tokens": self.state.tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "skipped": self.state.skipped}

    # -- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over up to eval_batches micro batches per rank (all ranks step together)."""
        if self.make_val_loader is None:
            return None
        self.engine.eval()
        limit = self.cfg.eval_batches or None
        total, count = 0.0, 0
        it = iter(self.make_val_loader())
        while limit is None or count < limit:
            batch = next(it, None)
            if not dist.all_true(batch is not None, self.device):  # ZeRO-3 needs every rank in each forward
                break
            total += self._forward(batch).float().item()
            count += 1
        self.engine.train()
        if count == 0:
            return None
        return dist.mean(total / count, self.device)

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        t = self.cfg
        stop = min(t.max_steps, t.stop_at_step or t.max_steps)
        self.throughput.reset(self.state.tokens)
        start = time.perf_counter()
        while self.state.step < stop:
            if self.profiler is not None:
                self.profiler.before_step(self.state.step)
            record = self.train_step()
            step = record["step"]
            if self.profiler is not None:
                self.profiler.after_step(step)
            evaluated = t.eval_every and (step % t.eval_every == 0 or step == t.max_steps)
            if evaluated or step % t.log_every == 0 or step == stop:
                tps = self.throughput.rate(self.state.tokens)
                record["tokens_per_s"] = tps
                record["mfu"] = mfu(self.flops_per_token, tps, self.peak_flops, self.world_size)
                if torch.cuda.is_available() and torch.cuda.is_initialized():  # this rank's peak so far
                    record["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if evaluated:
                    record["val_loss"] = self.evaluate()
                    self.throughput.reset(self.state.tokens)  # keep evaluation time out of tokens/s
                for cb in self.callbacks:
                    cb.on_log(step, record)
            if self.on_save is not None and ((t.save_every and step % t.save_every == 0) or step == stop):
                self.on_save(self)
                self.throughput.reset(self.state.tokens)  # keep checkpoint time out of tokens/s
        log.info("trained to step %d in %.1fs (%d skipped)", self.state.step, time.perf_counter() - start,
                 self.state.skipped)
        return self.state

    def close(self) -> None:
        for cb in self.callbacks:
            close = getattr(cb, "close", None)
            if close is not None:
                close()
