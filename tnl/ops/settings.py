"""Process-wide kernel settings: which backend the ops run, which LA2 algorithm, whether the LM-head loss is fused.

These change what a run computes, so a training run sets them from its config (`kernels.backend`,
`kernels.la2_algo`, `trainer.fused_loss`, saved in run_dir/config.yaml) once at start-up through `configure`.
Library users who never call it get "auto" everywhere: Triton exactly on CUDA tensors, each LA2 phase's measured
best algorithm, the fused loss wherever it can run.

Three environment variables override the configured values, for benchmarks and A/B runs that must not edit a
config: TNL_KERNEL_BACKEND, TNL_LA2_ALGO and TNL_FUSED_CE. They are read on every query (a benchmark may change one
between measurements), and each one that overrides the configuration is logged once, so a run's log says that
its saved config was not what ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import torch

log = logging.getLogger("tnl.ops")

CHOICES = {
    "backend": ("auto", "triton", "torch"),
    "la2_algo": ("auto", "chunk", "fused"),
    "fused_loss": ("auto", "on", "off"),
}
ENV = {"backend": "TNL_KERNEL_BACKEND", "la2_algo": "TNL_LA2_ALGO", "fused_loss": "TNL_FUSED_CE"}
# TNL_FUSED_CE has always also accepted the usual spellings of a boolean
_ALIASES = {"fused_loss": {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}}


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """The settings in force. `overrides` maps a key to the "VAR=value" environment override that set it."""

    backend: str = "auto"
    la2_algo: str = "auto"
    fused_loss: str = "auto"
    overrides: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"backend": self.backend, "la2_algo": self.la2_algo, "fused_loss": self.fused_loss,
                "overrides": dict(self.overrides)}


_configured = {key: "auto" for key in CHOICES}
_logged: set[tuple[str, str]] = set()  # (variable, value) pairs already reported


def _validate(key: str, value, source: str) -> str:
    norm = str(value).strip().lower()
    norm = _ALIASES.get(key, {}).get(norm, norm)
    if norm not in CHOICES[key]:
        raise ValueError(f"{source} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return norm


def configure(*, backend: str | None = None, la2_algo: str | None = None,
              fused_loss: str | None = None) -> KernelSettings:
    """Set the process-wide settings named (the others keep their values); returns `settings()`.

    backend: auto | triton | torch (triton on CPU tensors runs Triton's interpreter).
    la2_algo: auto | chunk | fused (one LA2 algorithm for every phase and shape; auto: the measured default).
    fused_loss: auto | on | off (auto: the fused linear + cross-entropy wherever the Triton backend serves the
        training step; on: always, which needs the Triton backend; off: the plain torch loss)."""
    given = {"backend": backend, "la2_algo": la2_algo, "fused_loss": fused_loss}
    new = {k: _validate(k, v, k) for k, v in given.items() if v is not None}
    _configured.update(new)
    return settings()


def _env_value(key: str) -> str | None:
    raw = os.environ.get(ENV[key], "").strip()
    if not raw:
        return None
    value = _validate(key, raw, ENV[key])
    if value != _configured[key] and (ENV[key], raw) not in _logged:
        _logged.add((ENV[key], raw))
        log.warning("environment override: %s=%s replaces the configured %s=%s", ENV[key], raw, key,
                    _configured[key])
    return value


def get(key: str) -> str:
    """One effective setting: the environment override when set, else the configured value."""
    env = _env_value(key)
    return _configured[key] if env is None else env


def settings() -> KernelSettings:
    """All effective settings, with the environment overrides that produced them."""
    values, overrides = {}, {}
    for key in CHOICES:
        env = _env_value(key)
        values[key] = _configured[key] if env is None else env
        if env is not None and env != _configured[key]:
            overrides[key] = f"{ENV[key]}={os.environ[ENV[key]].strip()}"
    return KernelSettings(**values, overrides=overrides)


@contextlib.contextmanager
def using(**values):
    """Temporarily `configure(**values)`; the previous configured values come back on exit."""
    saved = dict(_configured)
    try:
        yield configure(**values)
    finally:
        _configured.clear()
        _configured.update(saved)


def backend(device) -> str:
    """'triton' or 'torch': what the ops run for tensors on `device` (a torch.device, or a string like 'cuda')."""
    device = torch.device(device)
    chosen = get("backend")
    if chosen != "auto":
        return chosen
    return "triton" if device.type == "cuda" else "torch"
