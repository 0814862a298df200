"""One training run in this process: model + AdamW + DeepSpeed engine + loaders + resume, wired to the Trainer loop."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import deepspeed
import torch
from omegaconf import DictConfig, OmegaConf

import tnl
from tnl import ops
from tnl.checkpoint_format import CheckpointError, latest_tag, read_meta
from tnl.config import ConfigError, model_error
from tnl.data import PackedLoader
from tnl.models import build_model as build
from tnl.models import compile_blocks as compile_each_block
from tnl.ops import new_sequence_parallel
from tnl.train import checkpoint, dist
from tnl.train.metrics import build_sinks, peak_flops
from tnl.train.optim import WarmupCosine, build_optimizer, deepspeed_config, resolve_precision
from tnl.train.profile import StepProfiler
from tnl.train.seeding import seed_everything
from tnl.train.trainer import StepGate, Trainer, TrainState

log = logging.getLogger("tnl.train")

def compile_blocks(model: torch.nn.Module, backend: str, zero_stage: int) -> None:
    """tnl.models.compile_blocks for trainer.compile; refused under ZeRO-3 (its parameter hooks and compiled graphs
    do not mix)."""
    if zero_stage == 3:
        raise ConfigError("trainer.compile is not supported with ZeRO-3 (deepspeed.stage=3); leave it null")
    compile_each_block(model, backend)


def build_model(model_cfg: dict, ds_config: dict | None = None, zero_init: bool = False) -> torch.nn.Module:
    """tnl.models.build_model with config errors turned into one-line ConfigErrors; optionally ZeRO-3 partitioned."""
    try:
        if zero_init:
            with deepspeed.zero.Init(config_dict_or_path=ds_config):
                return build(model_cfg)
        return build(model_cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise model_error(err) from None


class LossOnly(torch.nn.Module):
    """ZeRO-3 root: returns the loss as a plain tensor (ZeRO-3's backward hooks only see tensors, not LMOutput) and
    keeps the LM-head weight gathered through forward and backward: the models use it outside its module's forward,
    including when the chunked loss is recomputed in backward. Checkpoint names gain a `model.` prefix.
    The fused LM-head loss (tnl.ops.loss: gradients computed inside the forward) is off here unless asked for:
    trainer.fused_loss=auto keeps ZeRO-3 on the checkpointed torch path this workaround was written and tested for.
    (The fused path needs no weight in backward and gave the same weights on 2 gloo ranks in fp32;
    trainer.fused_loss=on turns it on here to try it on GPUs.)"""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        deepspeed.zero.register_external_parameter(self, model.output_weight)

    def forward(self, input_ids, targets=None, cu_seqlens=None, **kwargs):
        # fused_loss=auto is off here (a run resolves it so at start-up, tnl.train.run.apply_kernel_settings; this
        # covers a LossOnly built without it); an explicit on or off is kept
        auto = ops.settings().fused_loss == "auto"
        with ops.using(fused_loss="off") if auto else contextlib.nullcontext():
            return self.model(input_ids, targets=targets, cu_seqlens=cu_seqlens, **kwargs).loss

    def flops_per_token(self, seq_len: int) -> float:
        return self.model.flops_per_token(seq_len)


class TrainingRun:
    def __init__(self, cfg: DictConfig, env: dist.DistEnv, device: torch.device, run_dir: Path, data_dir: Path,
                 model_cfg: dict, train_sources: dict[str, float] | None = None):
        self.cfg, self.env, self.device, self.run_dir, self.data_dir = cfg, env, device, run_dir, data_dir
        self.model_cfg = model_cfg
        self.ckpt_dir = run_dir / "checkpoints"
        t = cfg.trainer
        self.precision = resolve_precision(cfg.deepspeed.precision, device.type)
        self.ds_config = deepspeed_config(cfg, env.world_size, self.precision)

        seed_everything(cfg.seed, device.type, t.deterministic)
        model = build_model(model_cfg, self.ds_config, cfg.deepspeed.zero_init)
        self.flops_per_token = float(model.flops_per_token(t.seq_len))
        if t.compile:
            compile_blocks(model, t.compile, cfg.deepspeed.stage)
        if cfg.deepspeed.stage == 3:
            model = LossOnly(model)
        optimizer = build_optimizer(model, cfg.optim, device.type, cpu_offload=cfg.deepspeed.offload_optimizer)
        gate = StepGate(optimizer, device)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config,
                                               dist_init_required=False)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full sizes
        log.info("model %s: %s parameters, %.3g training FLOPs/token at seq_len %d; ZeRO-%d %s on %d x %s",
                 model_cfg["arch"], f"{n_params:,}", self.flops_per_token, t.seq_len, cfg.deepspeed.stage,
                 self.precision, env.world_size, device.type)

        try:  # P ranks share each sequence; the loaders see only the data-parallel replicas
            sp = new_sequence_parallel(cfg.parallel.sequence)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        loader_kw = dict(rank=sp.dp_rank, world_size=sp.dp_size, seed=cfg.seed, cu_seqlens=t.cu_seqlens)
        # the training mixture when data.mix is set (validation stays on the primary dataset)
        train_loader = PackedLoader(train_sources or data_dir, "train", t.seq_len, t.micro_batch_size, **loader_kw)
        make_val = None
        if t.eval_every:
            make_val = lambda: PackedLoader(data_dir, "val", t.seq_len, t.micro_batch_size, **loader_kw)
        self.trainer = Trainer(engine=self.engine, gate=gate, train_loader=train_loader, make_val_loader=make_val,
                               schedule=WarmupCosine(cfg.optim.lr, cfg.optim.warmup_steps, t.max_steps,
                                                     cfg.optim.min_lr_ratio),
                               cfg=t, device=device, world_size=env.world_size,
                               flops_per_token=self.flops_per_token, peak_flops=peak_flops(device, t.peak_flops),
                               on_save=self.save, sequence_parallel=sp if sp.size > 1 else None)
        self.resume()
        if env.is_main:
            self.trainer.callbacks = build_sinks(run_dir, cfg, self.trainer.state.step,
                                                 OmegaConf.to_container(cfg, resolve=True))
            if t.profile_steps:  # after profile_after steps of this invocation (compilation, autotuning)
                self.trainer.profiler = StepProfiler(run_dir / "profile.md",
                                                     self.trainer.state.step + t.profile_after, t.profile_steps)

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def meta(self, state: TrainState) -> dict[str, Any]:
        return {"step": state.step, "tokens": state.tokens, "skipped": state.skipped, "model": self.model_cfg,
                "world_size": self.env.world_size, "zero_stage": self.cfg.deepspeed.stage,
                "sequence_parallel": self.cfg.parallel.sequence,
                "precision": self.precision, "seq_len": self.cfg.trainer.seq_len, "data_dir": str(self.data_dir),
                "kernels": ops.settings().as_dict(),
                "tnl_version": tnl.__version__}

    def save(self, trainer: Trainer, fault_hook=None) -> str:
        """Checkpoint the trainer's step on every rank; fault_hook (tests) runs on this rank once its files are written,
        before the checkpoint is published."""
        state = trainer.state
        rank_state = {"trainer": state.state_dict(), "loader": trainer.train_loader.state_dict(),
                      "rng": checkpoint.rng_state()}
        tag = checkpoint.save(self.engine, self.ckpt_dir, state.step, rank_state, self.meta(state),
                              self.cfg.trainer.keep_last, self.env.rank, fault_hook=fault_hook)
        log.info("checkpoint %s saved", self.ckpt_dir / tag)
        return tag

    def resume(self) -> None:
        if self.env.is_main:
            checkpoint.clean_partial(self.ckpt_dir)
        dist.barrier()
        tag = latest_tag(self.ckpt_dir)
        if tag is None:
            return
        meta = read_meta(self.ckpt_dir, tag)
        checkpoint.check_compatible(meta, self.model_cfg, self.env.world_size, self.cfg.deepspeed.stage,
                                    self.ckpt_dir / tag)
        old_sp, sp = meta.get("sequence_parallel", 1), self.cfg.parallel.sequence
        if old_sp != sp:  # the loaders' rank layout differs
            raise CheckpointError(f"checkpoint {self.ckpt_dir / tag} was written with parallel.sequence="
                                             f"{old_sp}, this run uses {sp}: resume with the same parallel.sequence")
        rank_state = checkpoint.load(self.engine, self.ckpt_dir, tag, self.env.rank)
        self.trainer.state.load_state_dict(rank_state["trainer"])
        try:
            self.trainer.train_loader.load_state_dict(rank_state["loader"])
        except ValueError as err:
            raise CheckpointError(f"checkpoint {self.ckpt_dir / tag}: {err}") from None
        checkpoint.set_rng_state(rank_state["rng"])
        log.info("resumed from %s (step %d)", self.ckpt_dir / tag, self.trainer.state.step)

    # -- run ------------------------------------------------------------------------------------------------------
    def train(self) -> int:
        if self.trainer.state.step >= self.cfg.trainer.max_steps:
            log.info("run_dir %s is already trained to step %d", self.run_dir, self.trainer.state.step)
            return self.trainer.state.step
        return self.trainer.fit().step

    def close(self) -> None:
        self.trainer.close()
