"""Reading a training run's checkpoints: the on-disk format, shared by training (resume), export and evaluation.

Layout under run_dir/checkpoints/ (written by tnl.train.checkpoint):
    step_00000100/          one complete checkpoint (DeepSpeed files, trainer_rank<r>.pt, meta.json)
    latest                  the tag of the newest complete checkpoint (written last, by rename)
    .tmp_step_00000200/     a checkpoint being written; never resumed from, removed on the next start
    .tmp_old_step_00000100/ a checkpoint being deleted (pruned or replaced); removed on the next start

A directory named step_* with a meta.json is complete. This module only reads: it imports neither DeepSpeed (except
to consolidate ZeRO partitions, when a checkpoint has them) nor the training code, so tnl.eval and the HF export
use it without the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tnl.models import build_model

log = logging.getLogger("tnl.checkpoint")
TMP_PREFIX = ".tmp_"
LATEST = "latest"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used here (different model, world size, ZeRO stage; corrupt or missing files)."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Published checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and (p / META).is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by `latest` when it is complete, else the newest complete one, else None."""
    pointer = ckpt_dir / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    if named and (ckpt_dir / named / META).is_file():
        return named
    tags = complete_tags(ckpt_dir)
    if named and tags and os.environ.get("RANK", "0") == "0":  # once per job, not once per rank
        log.warning("%s names %r, which is not a complete checkpoint: using %s", pointer, named, tags[-1])
    return tags[-1] if tags else None


def read_meta(ckpt_dir: Path, tag: str) -> dict:
    try:
        return json.loads((ckpt_dir / tag / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} has an unreadable {META}: {err}") from None


def latest_meta(ckpt_dir: Path) -> dict:
    """meta.json of the latest complete checkpoint ({} when there is none)."""
    tag = latest_tag(ckpt_dir)
    return read_meta(ckpt_dir, tag) if tag else {}


def resolve_tag(ckpt_dir: Path, tag: str | None) -> str:
    """`tag` (or the latest one) when it names a complete checkpoint; CheckpointError otherwise."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"no complete checkpoint in {ckpt_dir}")
    if not (ckpt_dir / tag / META).is_file():
        raise CheckpointError(f"{ckpt_dir / tag} is not a complete checkpoint (no {META})")
    return tag


# -- the optimizer's parameter groups ------------------------------------------------------------------------------
# The optimizer state in a checkpoint is stored group by group in this order, so the split lives with the format.

def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases (ndim < 2), embeddings and LRPE theta are not decayed."""
    return param.ndim < 2 or "embed" in name or "theta" in name


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW's groups: the decayed parameters first, then the others (empty groups left out)."""
    decay, keep = [], []
    for name, p in named_params:
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# -- weights -------------------------------------------------------------------------------------------------------

def model_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint, consolidated from ZeRO partitions when needed."""
    folder = ckpt_dir / tag
    if any(folder.glob("*optim_states.pt")) and any(folder.glob("*zero_pp_rank_*")):
        # DeepSpeed only here, where ZeRO partitions must be merged
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
    param_groups gave them. Map them back to names (model rebuilt on the meta device)."""
    groups = optimizer_state.get("fp32_groups") if isinstance(optimizer_state, dict) else None
    if not groups or "model" not in meta:
        return {}
    model = build_model(meta["model"], device="meta")
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [[names[id(p)] for p in g["params"]] for g in param_groups(model.named_parameters(), 1.0)]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if [len(g) for g in groups] != [len(g) for g in ours] or any(
            tuple(t.shape) != shapes[n] for gn, gt in zip(ours, groups) for n, t in zip(gn, gt)):
        return {}  # written by other code: keep the module weights
    return {n: t for gn, gt in zip(ours, groups) for n, t in zip(gn, gt)}


def tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names that alias an earlier parameter (tied embeddings), which a consolidated dict may omit."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def load_model(ckpt_dir: Path, tag: str | None = None) -> tuple[torch.nn.Module, dict, str]:
    """(model in eval mode with the checkpoint's fp32 weights on the CPU, its meta.json, the tag) of the latest (or
    the given) complete checkpoint; CheckpointError naming the problem when it cannot be read."""
    tag = resolve_tag(ckpt_dir, tag)
    where = ckpt_dir / tag
    try:
        meta = read_meta(ckpt_dir, tag)
        state = model_state_dict(ckpt_dir, tag)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:  # CheckpointError is a RuntimeError
        if isinstance(err, CheckpointError):
            raise
        text = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"cannot read checkpoint {where}: {text}") from None
    if "model" not in meta:
        raise CheckpointError(f"{where / META} has no model config")
    model = build_model(meta["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in tied_names(model)]
    if missing or unexpected:
        raise CheckpointError(f"{where} does not match its model config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model.eval(), meta, tag
