"""Putting a run together: config -> (dry run | data, model, DeepSpeed engine, resume, loop, final checkpoint, export).

scripts/train.py composes the config and calls `main(cfg)`; every piece is a function here so tests reach it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf

import tnl.data
from tnl import locks, ops
from tnl.checkpoint_format import CheckpointError, latest_tag
from tnl.config import ConfigError, compose, model_error, to_dict
from tnl.data.mixture import mixture_members, mixture_sources, prepare_members
from tnl.data.pipeline import changed_build
from tnl.models import count_parameters
from tnl.train import dist
from tnl.train.errors import SetupError
from tnl.train.export import export_run
from tnl.train.trainer import NonFiniteError

log = logging.getLogger("tnl.train")
RUN_LOCK = ".lock"  # in run_dir, held by rank 0 while a run is alive


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank}] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def dry_run(cfg: DictConfig) -> int:
    """Print parameters=<int> (meta device, nothing allocated) and the resolved config."""
    try:
        n = count_parameters(to_dict(cfg.model))
    except (TypeError, ValueError, KeyError) as err:
        raise model_error(err) from None
    print(f"parameters={n}")
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    return n


def _on_rank0_then_share(fn, rank: int) -> Any:
    """Run fn() on rank 0 while the others wait; a failure there becomes the same SetupError on every rank."""
    result, message = None, None
    if rank == 0:
        try:
            result = fn()
        except (ValueError, OSError) as err:
            message = str(err)
    if torch.distributed.is_initialized():
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise SetupError(message if rank == 0 else "rank 0 failed setting up the run (see its error)")
    return result


def prepare_data(cfg: DictConfig, rank: int) -> Path:
    """The prepared data dir; rank 0 builds tokenizer + shards on first use while the other ranks wait."""
    data_cfg = to_dict(cfg.data)

    def build():
        c = tnl.data.DataConfig.from_mapping(data_cfg)
        if not tnl.data.is_prepared(data_cfg):
            # A run with checkpoints resumes on the shards it trained on: refuse before they are rebuilt from changed
            # inputs (a new Hub revision, edited files), which its loader state would not fit.
            why = changed_build(data_cfg) if latest_tag(Path(cfg.run_dir) / "checkpoints") else None
            if why:
                raise SetupError(f"run_dir {cfg.run_dir} has checkpoints trained on the data in {c.dir}, but {why} "
                                 "since: resuming would train on other data; restore the inputs (for a Hub dataset, "
                                 "pin data.hf.revision) or use a new run_dir")
            log.info("data %r is not prepared in %s: preparing it now (first use)", c.name, c.dir)
        return tnl.data.prepare(data_cfg)

    _on_rank0_then_share(build, rank)
    try:
        return Path(tnl.data.prepare(data_cfg))  # up to date now: a no-op on every rank
    except (ValueError, OSError) as err:
        raise SetupError(str(err)) from None


def training_mixture(cfg: DictConfig, primary_dir: Path, rank: int) -> dict[str, float] | None:
    """{prepared dir: weight} of the training mixture (data.mix, tnl.data.mixture), preparing each member with the
    primary dataset's tokenizer on first use (rank 0, the others wait); None when data.mix is empty."""
    primary = to_dict(cfg.data)
    try:
        members = mixture_members(primary, primary_dir)
    except ValueError as err:
        raise SetupError(str(err)) from None
    if not members:
        return None
    _on_rank0_then_share(lambda: prepare_members(members), rank)
    try:
        return mixture_sources(primary, primary_dir, members)
    except (ValueError, OSError) as err:
        raise SetupError(str(err)) from None


def check_vocab(data_dir: Path, model_cfg: dict) -> None:
    tok = tnl.data.load_tokenizer(data_dir)
    if tok.vocab_size > model_cfg["vocab_size"]:
        raise SetupError(f"the tokenizer in {data_dir} has {tok.vocab_size} tokens but the model's vocab_size is "
                         f"{model_cfg['vocab_size']}: set data.vocab_size<={model_cfg['vocab_size']} or pick a model "
                         "with a larger vocab")


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(run_dir / "config.yaml")


def apply_kernel_settings(cfg: DictConfig) -> ops.KernelSettings:
    """tnl.ops.configure from kernels.* and trainer.fused_loss, once per process before anything is built.

    fused_loss=auto means off under ZeRO-3: the ZeRO-3 root module (engine.LossOnly) keeps the LM-head weight
    gathered for the chunked torch loss it was written and tested with; `on` asks for the fused kernel there too."""
    fused = cfg.trainer.fused_loss
    if fused == "auto" and cfg.deepspeed.stage == 3:
        fused = "off"
    return ops.configure(backend=cfg.kernels.backend, la2_algo=cfg.kernels.la2_algo, fused_loss=fused)


def log_kernel_settings(settings: ops.KernelSettings, cfg: DictConfig) -> None:
    """One line with the kernel settings in force; environment variables that override the saved config say so."""
    note = " (auto: off under ZeRO-3)" if cfg.trainer.fused_loss == "auto" and cfg.deepspeed.stage == 3 else ""
    log.info("kernels: backend %s, la2_algo %s, fused_loss %s%s", settings.backend, settings.la2_algo,
             settings.fused_loss, note)
    for key, override in sorted(settings.overrides.items()):
        log.warning("kernels: %s is set by the environment (%s), not by this run's config.yaml", key, override)


def main(cfg: DictConfig) -> int:
    """Train (or resume) per cfg; returns the final step."""
    if cfg.trainer.dry_run:
        dry_run(cfg)
        return 0
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    env = dist.env()
    setup_logging(env.rank)
    if device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    env = dist.init(device_type)
    device = torch.device(device_type, env.local_rank) if device_type == "cuda" else torch.device("cpu")
    settings = apply_kernel_settings(cfg)
    if env.is_main:
        log_kernel_settings(settings, cfg)
    if device_type == "cuda" and env.is_main:
        log.info(ops.la2_table_note(torch.cuda.get_device_name(device)))
    run_dir = Path(cfg.run_dir)
    run_lock = _on_rank0_then_share(lambda: lock_run_dir(run_dir), env.rank)
    try:
        return _train(cfg, env, device, run_dir)
    finally:
        if run_lock is not None:
            run_lock.close()


def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """Create run_dir and take its lock for the whole run (rank 0; closing the file releases it).

    A second live run on one run_dir (say, ranks orphaned by a killed launcher and still training when the job is
    relaunched) would write the same checkpoints and metrics: it is refused in one line naming the holder. The lock
    dies with its holder however it dies (tnl.locks), so a killed run never blocks the next start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOCK
    try:
        lock = locks.hold(path)
    except OSError as err:
        log.warning("cannot lock %s (%s): a second run started on this run_dir would not be refused", path,
                    err.strerror or err)
        return None
    if lock is None:
        raise SetupError(f"run_dir {run_dir} is in use by a live run ({locks.holder(path)} holds {path}); stop it "
                         "or use another run_dir")
    return lock


def _train(cfg: DictConfig, env: dist.DistEnv, device: torch.device, run_dir: Path) -> int:
    """Data (prepared on first use), the training run (model, engine, resume), the loop, the export; the final step."""
    data_dir = prepare_data(cfg, env.rank)
    sources = training_mixture(cfg, data_dir, env.rank)
    model_cfg = to_dict(cfg.model)
    check_vocab(data_dir, model_cfg)
    from tnl.train.engine import TrainingRun  # function-level: keeps DeepSpeed's import off the dry run and --help

    training = TrainingRun(cfg, env, device, run_dir, data_dir, model_cfg,  # refuses an incompatible checkpoint
                           train_sources=sources)
    if env.is_main:
        write_config(cfg, run_dir)
    try:
        step = training.train()
        if cfg.trainer.export_hf and step >= cfg.trainer.max_steps:
            dist.barrier()
            if env.is_main:
                export_run(run_dir)
            dist.barrier()
    finally:
        training.close()
        dist.destroy()
    return step


def cli(argv: list[str]) -> int:
    """Entry point of scripts/train.py: argv are Hydra overrides; errors become one line on stderr."""
    argv = dist.strip_launcher_args(argv)
    if any(a in ("-h", "--help") for a in argv):
        print("usage: [deepspeed|torchrun|python] scripts/train.py [key=value ...]\n"
              "  groups: model= data= optim= deepspeed=zero0|zero1|zero2|zero3 logger=none|wandb|tensorboard "
              "experiment=\n  e.g. model=tnl_385m data=gutenberg trainer.max_steps=1000 run_dir=runs/x "
              "trainer.dry_run=true")
        return 0
    try:
        cfg = compose(argv)
        main(cfg)
    except (ConfigError, SetupError, CheckpointError, NonFiniteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume from the latest checkpoint", file=sys.stderr)
        return 130
    return 0
