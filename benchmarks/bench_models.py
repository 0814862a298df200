"""The models a benchmark names: configs/model/<name>.yaml or a path to such a file, read before any GPU work so
that a typo is one error line."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tnl` from this checkout, whatever the working directory
    sys.path.insert(1, str(REPO))


def config_path(name: str) -> Path:
    """configs/model/<name>.yaml of this checkout, or `name` itself when it is a yaml path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else REPO / "configs" / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no model config {path} (names: configs/model/*.yaml)")
    return path


def load_model_cfg(name: str) -> dict:
    """The model config as a plain dict with every ModelArgs field: a name is composed as a run composes it (its
    defaults list followed, e.g. tnl_400m -> tnl_385m); a yaml path must be flat (no defaults list)."""
    path = config_path(name)
    if not name.endswith((".yaml", ".yml")):
        from tnl.config import ConfigError, model_group

        try:
            return model_group(name, REPO / "configs")
        except ConfigError as err:
            raise ValueError(f"model config {name}: {err}") from None
    from omegaconf import OmegaConf

    from tnl.models.config import ModelArgs

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict) or "defaults" in cfg:
        raise ValueError(f"{path}: a model yaml given as a path must be a flat mapping (no defaults list); "
                         "put it in configs/model/ and pass its name")
    return ModelArgs.from_mapping(cfg).to_dict()


def model_args(name: str):
    """The model config as tnl.models.config.ModelArgs."""
    from tnl.models.config import ModelArgs

    return ModelArgs.from_mapping(load_model_cfg(name))


def label(name: str) -> str:
    """A model's name for result file names: tnl_385m, llama_385m@cudnn -> llama_385m_cudnn, a path -> its stem."""
    base, _, backend = name.partition("@")
    base = Path(base).stem if base.endswith((".yaml", ".yml")) else base
    return "_".join(p for p in (base, backend) if p)
