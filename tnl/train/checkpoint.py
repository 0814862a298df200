"""Writing checkpoints: DeepSpeed engine state + per-rank loader/RNG/trainer state, published atomically, keep-last-k.

The layout is tnl.checkpoint_format's (which also reads checkpoints, for export and evaluation). A checkpoint
directory only gets its final name after every rank has written its files and they are on disk, and loses it (by
rename) before anything in it is deleted, so a process killed at any moment leaves at most .tmp_ directories:
nothing named step_* is ever partial, and resuming uses the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tnl.checkpoint_format import META, TMP_PREFIX, CheckpointError, complete_tags, tag_for
from tnl.models.config import ModelArgs
from tnl.train import dist

log = logging.getLogger("tnl.train")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under folder (and the folders) to disk: a published checkpoint must survive a power loss."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(folder)


def _discard(path: Path) -> None:
    """Delete a checkpoint directory so that it never looks complete half-deleted: rename it away first."""
    trash = path.with_name(f"{TMP_PREFIX}old_{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def clean_partial(ckpt_dir: Path) -> None:
    """Remove, with one line each, the directories left by a save or a deletion that never finished (rank 0 only;
    they are never resumed from)."""
    if ckpt_dir.is_dir():
        for p in sorted(ckpt_dir.iterdir()):
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                log.warning("removing %s, left by a checkpoint save or deletion that never finished", p)
                shutil.rmtree(p, ignore_errors=True)


def _with_defaults(model_cfg: dict) -> dict:
    try:
        return ModelArgs.from_mapping(model_cfg).to_dict()
    except (TypeError, ValueError):  # not a complete model config: compare it as it is
        return dict(model_cfg)


def check_compatible(meta: dict, model_cfg: dict, world_size: int, stage: int, where: Path) -> None:
    """Refuse, with the differing keys named, a checkpoint written for another model or layout. Model configs are
    compared with their defaults filled in, so a key left out on one side equals its default on the other."""
    old, model_cfg = _with_defaults(meta.get("model", {})), _with_defaults(model_cfg)
    diff = sorted(k for k in set(old) | set(model_cfg)
                  if k != "gradient_checkpointing" and old.get(k) != model_cfg.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {model_cfg.get(k)!r}" for k in diff[:6])
        raise CheckpointError(f"checkpoint {where} is from a different model config ({shown}); "
                              "use another run_dir or the same model")
    if meta.get("world_size") != world_size:
        raise CheckpointError(f"checkpoint {where} was written by {meta.get('world_size')} ranks, "
                              f"this run has {world_size}: resume with the same number of ranks")
    if meta.get("zero_stage") != stage:
        raise CheckpointError(f"checkpoint {where} was written with deepspeed.stage={meta.get('zero_stage')}, "
                              f"this run uses {stage}: resume with the same ZeRO stage")


def save(engine, ckpt_dir: Path, step: int, rank_state: dict, meta: dict, keep_last: int, rank: int,
         fault_hook=None) -> str:
    """Write a checkpoint for `step` on every rank and publish it (collective: all ranks call this)."""
    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"step": step}, save_latest=False)
    torch.save(rank_state, ckpt_dir / tmp_tag / f"trainer_rank{rank}.pt")
    if fault_hook is not None:
        fault_hook()  # tests: die here, mid-write
    dist.barrier()
    if rank == 0:
        _fsync_tree(ckpt_dir / tmp_tag)  # every rank's files, before meta.json declares them complete
        _write_atomic(ckpt_dir / tmp_tag / META, json.dumps(meta, indent=1, sort_keys=True))
        final = ckpt_dir / tag
        if final.exists():  # re-saving a step (e.g. the final one): replace it
            _discard(final)
        (ckpt_dir / tmp_tag).rename(final)
        _fsync_dir(ckpt_dir)
        _write_atomic(ckpt_dir / "latest", tag)
        for old in complete_tags(ckpt_dir)[:-keep_last]:
            _discard(ckpt_dir / old)
    dist.barrier()
    return tag


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load(engine, ckpt_dir: Path, tag: str, rank: int) -> dict:
    """Restore the engine (weights, optimizer, fp32 masters) and return this rank's trainer state.

    A published checkpoint is complete by construction (see the module docstring); one damaged afterwards (disk,
    hand edits) is refused in one line that says how to resume from the one before."""
    where = ckpt_dir / tag
    damaged = lambda err: CheckpointError(f"checkpoint {where} is damaged ({_first_line(err)}); move it out of "
                                          f"{ckpt_dir} to resume from the previous one")
    try:
        path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise damaged(err) from None
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {where}")
    try:
        return torch.load(where / f"trainer_rank{rank}.pt", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise damaged(err) from None
