"""Putting a run together: config -> (dry run | data, model, DeepSpeed engine, resume, loop, final checkpoint, export).

scripts/train.py composes the config and calls `main(cfg)`; every piece is a function here so tests reach it.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tnl import locks
from tnl.train import dist
from tnl.train.config import ConfigError, model_error, to_dict

log = logging.getLogger("tnl.train")
RUN_LOCK = ".lock"  # in run_dir, held by rank 0 while a run is alive


class SetupError(ValueError):
    """Missing or inconsistent inputs found before training starts (data, tokenizer, vocab)."""


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[%(asctime)s rank{rank}] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def dry_run(cfg: DictConfig) -> int:
    """Print parameters=<int> (meta device, nothing allocated) and the resolved config."""
    from tnl.models import count_parameters

    try:
        n = count_parameters(to_dict(cfg.model))
    except (TypeError, ValueError, KeyError) as err:
        raise model_error(err) from None
    print(f"parameters={n}")
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    return n


def seed_everything(seed: int, device_type: str, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device_type == "cpu" or deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device_type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


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
    import tnl.data
    from tnl.data.pipeline import changed_build
    from tnl.train.checkpoint import latest_tag

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


def _mix_member(name: str, primary: dict, primary_dir: Path) -> dict:
    """The data config of one mixture member, re-targeted to the primary dataset's tokenizer and vocab (its shards go
    to `<its dir>.tok-<primary name>`, so a copy prepared with its own tokenizer is left alone)."""
    from tnl.train.config import compose

    if name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise SetupError(f"data.mix: no data config file {name!r}")
        node = OmegaConf.load(name)
        if "root" not in node:
            node.root = primary.get("root", "data")
        member = OmegaConf.to_container(OmegaConf.create({"data": node}).data, resolve=True)
    else:
        try:
            member = to_dict(compose([f"data={name}", f"data.root={primary.get('root', 'data')}"]).data)
        except ConfigError as err:
            raise SetupError(f"data.mix: {err}") from None
    from tnl.data import DataConfig

    try:  # names and dirs as DataConfig fills them in (a Hugging Face dataset's name comes from its path)
        own, primary_name = DataConfig.from_mapping(member).dir, DataConfig.from_mapping(primary).name
    except ValueError as err:
        raise SetupError(f"data.mix member {name!r}: {err}") from None
    member.update(tokenizer=str(primary_dir), vocab_size=primary["vocab_size"], mix=None, weight=1.0,
                  dir=f"{own}.tok-{primary_name}")
    return member


def mixture_sources(cfg: DictConfig, primary_dir: Path, rank: int) -> dict[str, float] | None:
    """{prepared dir: weight} of the training mixture (data.mix), preparing each member with the primary dataset's
    tokenizer on first use; None when data.mix is empty."""
    import tnl.data

    primary = to_dict(cfg.data)
    try:
        mix = tnl.data.config.parse_mix(primary.get("mix"))
    except ValueError as err:
        raise SetupError(str(err)) from None
    if not mix:
        return None
    members = [(_mix_member(name, primary, primary_dir), float(w)) for name, w in mix.items()]

    def build():
        for member, _ in members:
            if not tnl.data.is_prepared(member):
                log.info("mixture member %r is not prepared in %s: preparing it now (primary's tokenizer)",
                         member.get("name"), member.get("dir"))
            tnl.data.prepare(member)

    _on_rank0_then_share(build, rank)
    try:
        sources = {str(primary_dir): float(primary.get("weight", 1.0))}
        for member, w in members:
            d = str(tnl.data.prepare(member))  # up to date now: a no-op on every rank
            sources[d] = sources.get(d, 0.0) + w
    except (ValueError, OSError) as err:
        raise SetupError(str(err)) from None
    log.info("training mixture: %s", ", ".join(f"{d} x {w:g}" for d, w in sources.items()))
    return sources


def check_vocab(data_dir: Path, model_cfg: dict) -> None:
    import tnl.data

    tok = tnl.data.load_tokenizer(data_dir)
    if tok.vocab_size > model_cfg["vocab_size"]:
        raise SetupError(f"the tokenizer in {data_dir} has {tok.vocab_size} tokens but the model's vocab_size is "
                         f"{model_cfg['vocab_size']}: set data.vocab_size<={model_cfg['vocab_size']} or pick a model "
                         "with a larger vocab")


def write_config(cfg: DictConfig, run_dir: Path) -> None:
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(run_dir / "config.yaml")


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
    if device_type == "cuda" and env.is_main:
        from tnl_kernels.la2_config import table_note

        log.info(table_note(torch.cuda.get_device_name(device)))
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
    """Data (prepared on first use), the session (model, engine, resume), the loop, the export; the final step."""
    data_dir = prepare_data(cfg, env.rank)
    sources = mixture_sources(cfg, data_dir, env.rank)
    model_cfg = to_dict(cfg.model)
    check_vocab(data_dir, model_cfg)
    from tnl.train.engine import Session  # heavy imports (deepspeed) only past the dry run

    session = Session(cfg, env, device, run_dir, data_dir, model_cfg,  # refuses an incompatible checkpoint
                      train_sources=sources)
    if env.is_main:
        write_config(cfg, run_dir)
    try:
        step = session.train()
        if cfg.trainer.export_hf and step >= cfg.trainer.max_steps:
            dist.barrier()
            if env.is_main:
                from tnl.train.export import export_run

                export_run(run_dir)
            dist.barrier()
    finally:
        session.close()
        dist.destroy()
    return step


def cli(argv: list[str]) -> int:
    """Entry point of scripts/train.py: argv are Hydra overrides; errors become one line on stderr."""
    from tnl.train.checkpoint import CheckpointError
    from tnl.train.config import compose
    from tnl.train.trainer import NonFiniteError

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
