"""Throughput, MFU and the run's metric sinks (metrics.jsonl, console, wandb, tensorboard) as trainer callbacks.

A callback is any object with some of: on_log(step, record), on_eval(step, record), close(). Only rank 0 holds
sinks; every rank computes the same numbers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger("tnl.train")

# Dense bf16 tensor-core peak FLOP/s per device (no sparsity), matched as substrings of the CUDA device name,
# most specific first. Override with trainer.peak_flops.
PEAK_FLOPS_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16
    ("T4", 65e12),  # fp16
)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    """Per-device peak FLOP/s: the override, else the table entry for this GPU, else None (CPU, unknown GPU)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS_BF16:
        if key in name:
            return flops
    log.warning("no peak FLOP/s known for %r: mfu is null (set trainer.peak_flops)", name)
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float | None, world_size: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices."""
    if not peak_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * world_size)


class Throughput:
    """Tokens per second over the interval since the last call (all ranks' tokens)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.tokens0 = 0

    def reset(self, tokens: int) -> None:
        self.t0, self.tokens0 = time.perf_counter(), tokens

    def rate(self, tokens: int) -> float:
        now = time.perf_counter()
        r = (tokens - self.tokens0) / max(now - self.t0, 1e-9)
        self.t0, self.tokens0 = now, tokens
        return r


class JsonlSink:
    """run_dir/metrics.jsonl: one JSON object per logged step (and per evaluation)."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        truncate_after(path, resume_step)
        self.f = open(path, "a", encoding="utf-8")

    def on_log(self, step: int, record: dict) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop records beyond `step` (left by an interrupted run) so a resumed run continues the file exactly."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ConsoleSink:
    """A tqdm bar on a terminal, else one log line per logged step: step, loss, lr, tokens/s, MFU, ETA."""

    def __init__(self, start_step: int, max_steps: int, mode: str = "auto"):
        self.max_steps, self.start_step = max_steps, start_step
        self.t0 = time.perf_counter()
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if use_bar:
            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def on_log(self, step: int, record: dict) -> None:
        val = record.get("val_loss")
        if val is not None and self.bar is None:
            log.info("step %d val_loss %.4f", step, val)
        done = step - self.start_step
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.max_steps - step)
        mfu_s = f"{100 * record['mfu']:.1f}%" if record.get("mfu") is not None else "n/a"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            extra = {"val": f"{val:.4f}"} if val is not None else {}
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", mfu=mfu_s,
                                 **extra)
        else:
            log.info("step %d/%d loss %.4f lr %.3g grad_norm %s tokens/s %.0f mfu %s eta %s", step, self.max_steps,
                     record["loss"], record["lr"], _fmt_num(record["grad_norm"]), record["tokens_per_s"], mfu_s,
                     _fmt_time(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


class WandbSink:
    """Weights & Biases (offline by default); the run id is kept in run_dir so a resumed run continues it."""

    def __init__(self, run_dir: Path, logger_cfg: Any, config: dict):
        import wandb  # function-level: importing wandb is slow (seconds) and only this logger needs it

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        if not run_id:  # new run (or a file emptied by a kill mid-write: written atomically now)
            run_id = uuid.uuid4().hex[:12]
            tmp = id_file.with_name(id_file.name + ".tmp")
            tmp.write_text(run_id)
            tmp.replace(id_file)
        self.run = wandb.init(project=logger_cfg.project, name=logger_cfg.run_name or run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), mode=logger_cfg.mode, config=config)

    def on_log(self, step: int, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorboardSink:
    """TensorBoard scalars under run_dir/tensorboard."""

    def __init__(self, run_dir: Path):
        # function-level: tensorboard is an optional dependency (the `tensorboard` extra)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def on_log(self, step: int, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def build_sinks(run_dir: Path, cfg: Any, resume_step: int, config: dict) -> list:
    """The sinks rank 0 writes to: metrics.jsonl, the console, and the chosen optional logger."""
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl", resume_step),
                   ConsoleSink(resume_step, cfg.trainer.max_steps, cfg.trainer.progress)]
    if cfg.logger.name == "wandb":
        sinks.append(WandbSink(run_dir, cfg.logger, config))
    elif cfg.logger.name == "tensorboard":
        sinks.append(TensorboardSink(run_dir))
    return sinks
