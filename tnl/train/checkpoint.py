"""Checkpoints: DeepSpeed engine state + per-rank loader/RNG/trainer state, published atomically, keep-last-k.

Layout under run_dir/checkpoints/:
    step_00000100/          one complete checkpoint (DeepSpeed files, trainer_rank<r>.pt, meta.json)
    latest                  the tag of the newest complete checkpoint (written last, by rename)
    .tmp_step_00000200/     a checkpoint being written; never resumed from, removed on the next start
    .tmp_old_step_00000100/ a checkpoint being deleted (pruned or replaced); removed on the next start

A checkpoint directory only gets its final name after every rank has written its files and they are on disk, and
loses it (by rename) before anything in it is deleted, so a process killed at any moment leaves at most .tmp_
directories: nothing named step_* is ever partial, and resuming uses the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnl.train import dist

log = logging.getLogger("tnl.train")
TMP_PREFIX = ".tmp_"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed here (different model, world size, ZeRO stage; corrupt files)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


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


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Published checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and (p / "meta.json").is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by `latest` when it is complete, else the newest complete one, else None."""
    pointer = ckpt_dir / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else None
    if named and (ckpt_dir / named / "meta.json").is_file():
        return named
    tags = complete_tags(ckpt_dir)
    if named and tags and dist.env().is_main:
        log.warning("%s names %r, which is not a complete checkpoint: using %s", pointer, named, tags[-1])
    return tags[-1] if tags else None


def read_meta(ckpt_dir: Path, tag: str) -> dict:
    try:
        return json.loads((ckpt_dir / tag / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} has an unreadable meta.json: {err}") from None


def clean_partial(ckpt_dir: Path) -> None:
    """Remove, with one line each, the directories left by a save or a deletion that never finished (rank 0 only;
    they are never resumed from)."""
    if ckpt_dir.is_dir():
        for p in sorted(ckpt_dir.iterdir()):
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                log.warning("removing %s, left by a checkpoint save or deletion that never finished", p)
                shutil.rmtree(p, ignore_errors=True)


def check_compatible(meta: dict, model_cfg: dict, world_size: int, stage: int, where: Path) -> None:
    """Refuse, with the differing keys named, a checkpoint written for another model or layout."""
    old = meta.get("model", {})
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
        _write_atomic(ckpt_dir / tmp_tag / "meta.json", json.dumps(meta, indent=1, sort_keys=True))
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


def model_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint, consolidated from ZeRO partitions when needed (for the HF export)."""
    folder = ckpt_dir / tag
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("*zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        files = sorted(folder.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"no DeepSpeed model states in {folder}")
        states = torch.load(files[0], map_location="cpu", weights_only=False)
        sd = dict(states["module"])
        sd.update(_fp32_masters(states.get("optimizer"), read_meta(ckpt_dir, tag)))
    if sd and all(k.startswith("model.") for k in sd):  # saved through the ZeRO-3 LossOnly wrapper
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _fp32_masters(optimizer_state: Any, meta: dict) -> dict[str, torch.Tensor]:
    """ZeRO-0 with bf16/fp16 rounds the module weights; its optimizer keeps fp32 masters, group by group in the order
    tnl.train.optim.param_groups gave them. Map them back to names (model rebuilt on the meta device)."""
    groups = optimizer_state.get("fp32_groups") if isinstance(optimizer_state, dict) else None
    if not groups or "model" not in meta:
        return {}
    from tnl.models import build_model
    from tnl.train.optim import param_groups

    model = build_model(meta["model"], device="meta")
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[names[id(p)] for p in g["params"]] for g in param_groups(model.named_parameters(), 1.0)]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if [len(g) for g in groups] != [len(g) for g in ours] or any(
            tuple(t.shape) != shapes[n] for gn, gt in zip(ours, groups) for n, t in zip(gn, gt)):
        return {}  # written by other code: keep the module weights
    return {n: t for gn, gt in zip(ours, groups) for n, t in zip(gn, gt)}


def info(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    return read_meta(ckpt_dir, tag)
