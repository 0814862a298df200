"""The run config as the one owner of what a run computes: the kernel switches (kernels.*, trainer.fused_loss) are
config keys applied once at start-up and logged (environment overrides named), the model group has a schema with
ModelArgs' defaults, the yaml aliases extend instead of copying, and the package layers import downwards only."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from procs import repo_env

from tnl import ops
from tnl.config import ConfigError, compose
from tnl.models.config import ModelArgs
from tnl.ops.settings import ENV
from tnl.train.run import apply_kernel_settings, log_kernel_settings


@pytest.fixture
def clean_settings(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    with ops.using():  # whatever a test configures is undone afterwards
        yield


@pytest.mark.parametrize("stage, fused, expected", [
    (2, "auto", "auto"), (3, "auto", "off"), (3, "on", "on"), (2, "off", "off"), (0, "on", "on"),
])
def test_kernel_settings_come_from_the_config(clean_settings, stage, fused, expected):
    cfg = compose([f"deepspeed=zero{stage}", f"trainer.fused_loss={fused}", "kernels.backend=torch",
                   "kernels.la2_algo=chunk"])
    got = apply_kernel_settings(cfg)
    assert (got.backend, got.la2_algo, got.fused_loss, got.overrides) == ("torch", "chunk", expected, {})
    assert ops.settings() == got


def test_environment_override_is_logged_against_the_config(clean_settings, monkeypatch, caplog):
    cfg = compose(["trainer.fused_loss=off", "kernels.backend=torch"])
    monkeypatch.setenv("TNL_FUSED_CE", "on")
    with caplog.at_level(logging.INFO):
        settings = apply_kernel_settings(cfg)
        log_kernel_settings(settings, cfg)
    assert settings.fused_loss == "on" and settings.overrides == {"fused_loss": "TNL_FUSED_CE=on"}
    assert "kernels: backend torch, la2_algo auto, fused_loss on" in caplog.text
    assert "fused_loss is set by the environment (TNL_FUSED_CE=on), not by this run's config.yaml" in caplog.text


@pytest.mark.parametrize("model", ["tnl_tiny", "llama_tiny", "tnl_385m", "llama_385m", "tnl_15b"])
def test_model_group_has_every_model_key_with_its_default(model):
    cfg = compose([f"model={model}", "model.gradient_checkpointing=true", "model.loss_chunk_size=1024"])
    args = ModelArgs.from_mapping(OmegaConf.to_container(cfg.model))
    assert args.gradient_checkpointing and args.loss_chunk_size == 1024
    defaults = ModelArgs(arch="tnl", vocab_size=1, hidden_size=1, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=1)
    assert args.norm_eps == defaults.norm_eps and args.lrpe_layers == defaults.lrpe_layers  # no yaml restates them


def test_model_group_without_a_model_names_the_unset_keys(tmp_path):
    import shutil

    from tnl.paths import default_config_dir

    configs = tmp_path / "configs"
    shutil.copytree(default_config_dir(), configs)
    (configs / "model" / "half.yaml").write_text("arch: tnl\nvocab_size: 64\n")
    with pytest.raises(ConfigError, match="model group leaves model.hidden_size, model.intermediate_size, "):
        compose(["model=half"], configs)


@pytest.mark.parametrize("alias, target", [("tnl_400m", "tnl_385m"), ("llama_400m", "llama_385m")])
def test_alias_models_are_their_targets(alias, target):
    assert compose([f"model={alias}"]).model == compose([f"model={target}"]).model


def test_dry_run_prints_the_kernel_keys(tmp_path):
    """The documented dry run: the switches land in the resolved config (the one a real run saves)."""
    r = subprocess.run([sys.executable, "scripts/train.py", "trainer.dry_run=true", "trainer.fused_loss=off",
                        "kernels.backend=torch", "kernels.la2_algo=chunk", f"run_dir={tmp_path / 'run'}"],
                       env=repo_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    printed = OmegaConf.create(r.stdout.split("\n", 1)[1])
    assert printed.trainer.fused_loss == "off" and printed.kernels == {"backend": "torch", "la2_algo": "chunk"}


@pytest.mark.parametrize("module, absent", [
    ("tnl.train.engine", ["tnl.train.run"]),  # no engine <-> run cycle
    ("tnl.eval.cli", ["tnl.train", "deepspeed"]),  # eval reads checkpoints through tnl.checkpoint_format
    ("tnl.hf", ["tnl.train", "deepspeed"]),
    ("tnl.train.export", ["tnl.train.engine", "tnl.train.checkpoint", "deepspeed"]),
    ("tnl.data.mixture", ["tnl.train"]),
    ("tnl.train.run", ["tnl.train.engine", "deepspeed"]),  # the dry run stays light
])
def test_layers_import_downwards(module, absent):
    code = (f"import sys, {module}; bad = [m for m in {absent!r} if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], env=repo_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (module, r.stdout, r.stderr[-1000:])


def _imports(path) -> set[str]:
    """The tnl modules a source file imports anywhere (module level or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("tnl.")}


def test_no_import_cycles_and_eval_data_below_the_trainer():
    """Function-level imports included: a cycle hidden inside a function (engine <-> run) is still a cycle."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts): p
               for folder in ("tnl/train", "tnl/data", "tnl/eval") for p in (root / folder).glob("*.py")
               if p.name != "__init__.py"}
    graph = {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        return seen

    cycles = sorted(m for m in graph if m in reach(m))
    assert not cycles, cycles
    low = {m: sorted(d for d in graph[m] if d.startswith("tnl.train.")) for m in graph
           if m.startswith(("tnl.eval.", "tnl.data."))}
    assert not any(low.values()), low


def test_model_group_for_tools():
    from tnl.config import model_group

    assert model_group("tnl_400m") == model_group("tnl_385m") and model_group("tnl_400m")["hidden_size"] == 1024
    with pytest.raises(ConfigError, match="model/no_such"):
        model_group("no_such")


def test_checkpoint_model_config_is_compared_with_defaults_filled_in(tmp_path):
    """A checkpoint whose meta.json leaves out keys at their defaults (older configs stated fewer) still resumes under
    the schema's full model config; a real difference is still refused."""
    from tnl.train import checkpoint

    full = OmegaConf.to_container(compose(["model=tnl_tiny"]).model)
    old = {k: v for k, v in full.items() if k not in ("recompute_elementwise", "rope_theta", "norm_eps")}
    meta = {"model": old, "world_size": 1, "zero_stage": 2}
    checkpoint.check_compatible(meta, full, 1, 2, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="norm_eps: 1e-06 -> 1e-05"):
        checkpoint.check_compatible(meta, {**full, "norm_eps": 1e-5}, 1, 2, tmp_path)
