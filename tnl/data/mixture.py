"""Training mixtures (data.mix): the other datasets a run draws from, tokenized with the primary dataset's tokenizer.

    mixture_members(primary, primary_dir) -> [(member data config, weight), ...]   ([] when data.mix is empty)
    prepare_members(members)                    tokenizer-less shards of each member, built on first use
    mixture_sources(primary, primary_dir, members) -> {prepared dir: weight}   what PackedLoader reads

A member is a configs/data name or a .yaml data config file. Its shards go to `<its dir>.tok-<primary name>`, so a
copy prepared with its own tokenizer is left alone. Preparing is the caller's to schedule (the trainer does it on
rank 0 while the other ranks wait); everything here is plain functions of the configs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tnl.data.config import DataConfig, DataError, parse_mix
from tnl.data.pipeline import is_prepared, prepare
from tnl.paths import default_config_dir

log = logging.getLogger("tnl.data")


def _load_member(name: str, root: str) -> dict:
    """The resolved data config of a mixture member: a .yaml file, or configs/data/<name>.yaml."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise DataError(f"data.mix: no data config file {name!r}")
    else:
        path = default_config_dir() / "data" / f"{name}.yaml"
        if not path.is_file():
            raise DataError(f"data.mix: no data config {name!r} (no {path})")
    try:
        node = OmegaConf.load(path)
        if "defaults" in node:
            raise DataError(f"data.mix member {name!r}: {path} has a defaults list; give a self-contained data config")
        if "root" not in node:
            node.root = root
        # `${data.root}` and `${.name}` resolve as they do in the composed training config
        return OmegaConf.to_container(OmegaConf.create({"data": node}).data, resolve=True)
    except OmegaConfBaseException as err:
        raise DataError(f"data.mix member {name!r}: {str(err).splitlines()[0]}") from None


def member_config(name: str, primary: dict, primary_dir: Path) -> dict:
    """The data config of one mixture member, re-targeted to the primary dataset's tokenizer and vocab."""
    member = _load_member(name, primary.get("root", "data"))
    try:  # names and dirs as DataConfig fills them in (a Hugging Face dataset's name comes from its path)
        own, primary_name = DataConfig.from_mapping(member).dir, DataConfig.from_mapping(primary).name
    except ValueError as err:
        raise DataError(f"data.mix member {name!r}: {err}") from None
    member.update(tokenizer=str(primary_dir), vocab_size=primary["vocab_size"], mix=None, weight=1.0,
                  dir=f"{own}.tok-{primary_name}")
    return member


def mixture_members(primary: dict, primary_dir: Path) -> list[tuple[dict, float]]:
    """(data config, weight) of each member of the primary's data.mix."""
    return [(member_config(name, primary, primary_dir), float(w)) for name, w in parse_mix(primary.get("mix")).items()]


def prepare_members(members: list[tuple[dict, float]]) -> None:
    """Build each member's shards (with the primary's tokenizer) where they are not up to date."""
    for member, _ in members:
        if not is_prepared(member):
            log.info("mixture member %r is not prepared in %s: preparing it now (primary's tokenizer)",
                     member.get("name"), member.get("dir"))
        prepare(member)


def mixture_sources(primary: dict, primary_dir: Path, members: list[tuple[dict, float]]) -> dict[str, float]:
    """{prepared dir: weight} of the training mixture: the primary's dir with data.weight, then each member."""
    sources = {str(primary_dir): float(primary.get("weight", 1.0))}
    for member, w in members:
        d = str(prepare(member))  # up to date by now: a no-op
        sources[d] = sources.get(d, 0.0) + w
    log.info("training mixture: %s", ", ".join(f"{d} x {w:g}" for d, w in sources.items()))
    return sources
