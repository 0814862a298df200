"""The run configuration: the typed schema of every key (train, eval and data tools share it) and the Hydra
composition that applies it.

configs/config.yaml and its groups are composed by Hydra's compose API (no chdir, no outputs/ folder, no .hydra/)
on top of the dataclasses below (registered as the schema `tnl_schema`), so a misspelt key or a value of the wrong
type fails with one line naming it. The defaults of every knob live here, once, and the yaml files set only what
differs. The `model` and `data` groups' schemas are derived from tnl.models' ModelArgs and tnl.data's DataConfig,
which own those keys' defaults (and check the values).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tnl.data.config import DataConfig
from tnl.models.config import ModelArgs
from tnl.paths import default_config_dir

FUSED_LOSS = ("auto", "on", "off")
KERNEL_BACKENDS = ("auto", "triton", "torch")
LA2_ALGOS = ("auto", "chunk", "fused")


class ConfigError(ValueError):
    """A config that cannot be used: the message names the key (or file) to fix."""


@dataclass
class TrainerConfig:
    max_steps: int = 200  # optimizer steps; the LR schedule decays over exactly these
    micro_batch_size: int = 8  # sequences per rank per forward
    grad_accum: int = 1  # micro batches per optimizer step
    seq_len: int = 256
    save_every: int = 100  # 0: only the final checkpoint
    keep_last: int = 2  # checkpoints kept on disk (the newest ones)
    eval_every: int = 100  # 0: no validation
    eval_batches: int = 20  # validation micro batches per rank (0: the whole val split)
    log_every: int = 1
    dry_run: bool = False  # build on the meta device, print parameters=<int> and the config, exit
    stop_at_step: Optional[int] = None  # end this invocation early (checkpointed), as a preempted job would
    max_bad_steps: int = 5  # this many non-finite steps in a row abort the run
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU; null: looked up from the GPU name
    cu_seqlens: bool = False  # pack each micro batch as one row with document boundaries (models reset there)
    export_hf: bool = True  # write run_dir/hf at the end
    progress: str = "auto"  # auto | bar | log
    deterministic: bool = False  # torch deterministic algorithms on CUDA too (slower); always on on CPU
    compile: Optional[str] = None  # torch.compile backend for each block ("inductor" fuses the elementwise ops
    # around the matmuls; LA2 and the fused loss are custom ops inside the graphs); null: eager. Not with ZeRO-3.
    profile_steps: int = 0  # > 0: profile this many steps (torch.profiler) and write run_dir/profile.md, the top
    # GPU kernels per step; measures only, the steps train as usual
    profile_after: int = 10  # ... starting after this many steps of the invocation (compilation, autotuning)
    fused_loss: str = "auto"  # the fused LM-head linear + cross-entropy kernel: auto (where the Triton backend runs
    # the step; off under ZeRO-3) | on | off (the chunked torch loss)


@dataclass
class KernelsConfig:
    """tnl.ops settings, applied once at start-up (tnl.ops.configure)."""

    backend: str = "auto"  # auto (Triton on CUDA tensors, torch on CPU) | triton (on CPU: the interpreter) | torch
    la2_algo: str = "auto"  # LA2 algorithm for every phase: auto (the measured default per shape) | chunk | fused


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    fused: Optional[bool] = None  # null: fused AdamW on CUDA, foreach elsewhere


@dataclass
class DeepSpeedConfig:
    stage: int = 2  # ZeRO stage 0..3
    precision: str = "auto"  # auto (bf16 when the accelerator supports it) | bf16 | fp16 | fp32
    gradient_clipping: float = 1.0
    offload_optimizer: bool = False  # ZeRO-3 (or 2): optimizer state in CPU memory
    offload_param: bool = False  # ZeRO-3: parameters in CPU memory
    zero_init: bool = False  # ZeRO-3: build the model partitioned (for models that do not fit one device)
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    extra: dict[str, Any] = field(default_factory=dict)  # merged last into the generated DeepSpeed config


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb | tensorboard
    project: str = "tnl"
    mode: str = "offline"  # wandb mode: offline | online | disabled
    run_name: Optional[str] = None


@dataclass
class ParallelConfig:
    sequence: int = 1  # ranks per sequence-parallel group (TNL only); data parallel over world_size / sequence


def _schema_of(cls: type, name: str, required: Any) -> type:
    """A structured config with the fields and defaults of the dataclass `cls` (its owner's), so an override of any
    of its keys composes with every yaml of the group, and a misspelt key fails at composition. Fields without a
    default get `required` (MISSING: the yaml must set them; None: `cls` itself checks them). Tuples are lists in
    yaml; `X | None` is Optional[X]."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = Optional[next(a for a in typing.get_args(tp) if a is not type(None))]
        if typing.get_origin(tp) is tuple:
            tp, default = list[typing.get_args(tp)[0]], field(default_factory=lambda d=f.default: list(d))
            if f.default is dataclasses.MISSING:
                default = field(default=required)
        else:
            default = field(default=required if f.default is dataclasses.MISSING else f.default)
        if required is None and tp is not Any:
            tp = Optional[tp]  # the open groups' yamls may say null for "the default"
        specs.append((f.name, tp, default))
    return dataclasses.make_dataclass(name, specs)


# The model group: tnl.models' ModelArgs owns its keys and defaults; the architecture keys must come from a yaml.
ModelConfig = _schema_of(ModelArgs, "ModelConfig", MISSING)
# The data group: tnl.data's DataConfig owns its keys and defaults, and checks the values (name, inputs, dir, hf).
DataSchema = _schema_of(DataConfig, "DataSchema", None)


@dataclass
class RootConfig:
    model: Any = field(default_factory=ModelConfig)
    data: Any = field(default_factory=DataSchema)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    seed: int = 1234
    run_dir: str = "runs/default"


def _one_line(err: Exception) -> str:
    """Hydra/OmegaConf messages carry a multi-line 'full_key/object_type' trailer: keep the informative part."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("object_type=", "reference_type=", "full_key:"))]
    full_key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    msg = " ".join(keep).split(" Config search path")[0] or type(err).__name__
    return f"{msg} (key: {full_key})" if full_key and full_key not in msg else msg


SCHEMA_NAME = "tnl_schema"  # configs/config.yaml lists it first in its defaults


def register_schema() -> None:
    """Make RootConfig known to Hydra, so overrides of any schema key (even one no yaml sets) are accepted."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)


def compose(overrides: list[str], config_dir: Path | str | None = None) -> DictConfig:
    """Compose configs/config.yaml with command-line overrides, validate, resolve; raise ConfigError on bad input."""
    config_dir = Path(config_dir or default_config_dir()).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {config_dir} (set TNL_CONFIG_DIR to the project's configs/ folder)")
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="tnl"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        # Hydra lets `+trainer.foo=1` into the typed node: re-merge a plain copy onto the schema to refuse it.
        plain = OmegaConf.to_container(cfg, resolve=False)
        cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), plain)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        msg = _one_line(err)
        if err.__cause__ is not None and str(err.__cause__):
            msg = f"{msg}: {_one_line(err.__cause__)}"
        raise ConfigError(msg) from None
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Range checks the types alone cannot express."""
    t, o, d = cfg.trainer, cfg.optim, cfg.deepspeed
    positive = {"trainer.max_steps": t.max_steps, "trainer.micro_batch_size": t.micro_batch_size,
                "trainer.grad_accum": t.grad_accum, "trainer.seq_len": t.seq_len, "trainer.log_every": t.log_every,
                "trainer.keep_last": t.keep_last, "trainer.max_bad_steps": t.max_bad_steps}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key in ("save_every", "eval_every", "eval_batches", "profile_steps", "profile_after"):
        if t[key] < 0:
            raise ConfigError(f"trainer.{key} must be >= 0, got {t[key]}")
    if d.stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.stage must be 0, 1, 2 or 3, got {d.stage}")
    if d.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"deepspeed.precision must be auto, bf16, fp16 or fp32, got {d.precision!r}")
    if (d.offload_param or d.zero_init) and d.stage != 3:
        raise ConfigError("deepspeed.offload_param and deepspeed.zero_init need deepspeed.stage=3")
    if d.offload_optimizer and d.stage < 2:
        raise ConfigError("deepspeed.offload_optimizer needs deepspeed.stage=2 or 3")
    if o.name != "adamw":
        raise ConfigError(f"optim.name: only 'adamw' is implemented, got {o.name!r}")
    if o.lr <= 0 or not 0 <= o.min_lr_ratio <= 1 or o.warmup_steps < 0 or len(o.betas) != 2:
        raise ConfigError("optim: need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0 and two betas")
    if cfg.logger.name not in ("none", "wandb", "tensorboard"):
        raise ConfigError(f"logger.name must be none, wandb or tensorboard, got {cfg.logger.name!r}")
    if t.compile is not None and t.compile not in ("inductor", "eager", "aot_eager", "cudagraphs"):
        raise ConfigError(f"trainer.compile must be null, inductor, eager, aot_eager or cudagraphs, got {t.compile!r}")
    if t.progress not in ("auto", "bar", "log"):
        raise ConfigError(f"trainer.progress must be auto, bar or log, got {t.progress!r}")
    unset = sorted(OmegaConf.missing_keys(cfg.model))
    if unset:
        raise ConfigError(f"the model group leaves {', '.join(unset)} unset: pick a model with model=<name> "
                          "(configs/model/) or set them")
    choices = {"trainer.fused_loss": (t.fused_loss, FUSED_LOSS), "kernels.backend": (cfg.kernels.backend,
               KERNEL_BACKENDS), "kernels.la2_algo": (cfg.kernels.la2_algo, LA2_ALGOS)}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    if cfg.parallel.sequence < 1:
        raise ConfigError(f"parallel.sequence must be >= 1, got {cfg.parallel.sequence}")
    if cfg.parallel.sequence > 1 and cfg.model.arch != "tnl":
        raise ConfigError(f"parallel.sequence > 1 needs a TNL model (arch: tnl), got arch {cfg.model.arch!r}")


def model_error(err: Exception) -> ConfigError:
    """A model-building error as a ConfigError whose message says it is about the model group."""
    msg = str(err)
    return ConfigError(msg if msg.startswith("model") else f"model config: {msg}")


def to_dict(node: Any) -> Any:
    """A plain, resolved container (what tnl.models / tnl.data take)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def model_group(name: str, config_dir: Path | str | None = None) -> dict:
    """configs/model/<name>.yaml as a run composes it (its defaults list followed, ModelArgs' defaults filled in), as
    a plain dict: for tools that name a model without composing a whole run config."""
    return to_dict(compose([f"model={name}"], config_dir).model)
