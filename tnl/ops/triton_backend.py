"""The one door from tnl into the Triton kernels (`tnl_kernels`): lazy import, interpreter mode, LA2 algorithm.

Triton on CPU tensors means Triton's interpreter, which Triton chooses when a function is decorated: when `triton`
itself is imported (its standard library, tl.sum, tl.cdiv, ...) and when the `tnl_kernels` modules are. So
`tnl_kernels` is imported here lazily, and for CPU tensors TRITON_INTERPRET=1 is set first (with a log line: it is
the one environment variable tnl writes, because Triton reads nothing else). That works as long as nothing imported
triton before in this process. A process that already imported triton compiled (TRITON_INTERPRET unset) cannot
interpret afterwards: that raises a RuntimeError telling you to set TRITON_INTERPRET=1 before anything imports
triton (the reverse, interpreted kernels called on CUDA tensors, raises too).

Every call hands the kernels the LA2 algorithm in force (tnl.ops.settings: `la2_algo`), so that the setting and
the environment override reach kernels that tnl did not configure itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import torch

from tnl.ops import settings

log = logging.getLogger("tnl.ops")

_mode_ok: set[str] = set()  # device types whose Triton mode was verified (modes of defined functions never change)


def kernel_modes() -> set[str]:
    """'interpreted' / 'compiled' for the Triton functions already defined in this process: triton's own standard
    library (decorated when triton is imported) and every loaded tnl_kernels module. Imports nothing."""
    jit, interp = sys.modules.get("triton.runtime.jit"), sys.modules.get("triton.runtime.interpreter")
    if jit is None:
        return set()  # triton not imported yet: whatever comes next follows TRITON_INTERPRET
    kinds = (jit.JITFunction,) + ((interp.InterpretedFunction,) if interp is not None else ())
    modes = set()
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "triton.language.standard" or name.partition(".")[0] == "tnl_kernels"):
            continue
        for obj in list(vars(mod).values()):
            for _ in range(8):  # unwrap autotune / heuristics wrappers (.fn) down to the decorated function
                if obj is None or isinstance(obj, kinds):
                    break
                obj = getattr(obj, "fn", None)
            if isinstance(obj, jit.JITFunction):
                modes.add("compiled")
            elif obj is not None and isinstance(obj, kinds):
                modes.add("interpreted")
    return modes


def _check_mode(device) -> None:
    if device.type == "cpu":
        if "compiled" in kernel_modes():
            raise RuntimeError(
                "the Triton backend was asked for CPU tensors, but triton (or tnl_kernels) was already imported in "
                "compiled mode in this process; set TRITON_INTERPRET=1 in the environment before anything imports "
                "triton, or configure the torch backend (kernels.backend=torch)"
            )
        if os.environ.get("TRITON_INTERPRET") != "1":
            log.info("setting TRITON_INTERPRET=1: the Triton backend on CPU tensors runs Triton's interpreter")
            os.environ["TRITON_INTERPRET"] = "1"
    elif device.type == "cuda":
        if "interpreted" in kernel_modes():
            raise RuntimeError(
                "CUDA tensors reached Triton kernels defined under Triton's interpreter (TRITON_INTERPRET=1 was set "
                "when triton or tnl_kernels was imported); unset TRITON_INTERPRET to run compiled kernels"
            )
    else:
        raise ValueError(f"the Triton backend supports CUDA and CPU tensors, got device {device}")


def kernels_module(device):
    """The `tnl_kernels` package, imported for tensors on `device` (see the module docstring), with the LA2
    algorithm in force handed to it."""
    if device.type not in _mode_ok:
        _check_mode(device)
    kernels = importlib.import_module("tnl_kernels")
    _mode_ok.add(device.type)
    algo = settings.get("la2_algo")
    kernels.la2_config.forced_algo = None if algo == "auto" else algo
    return kernels


def triton_fn(name: str, device):
    """tnl_kernels.<name> for tensors on `device`."""
    fn = getattr(kernels_module(device), name, None)
    if fn is None:
        raise RuntimeError(f"tnl_kernels has no {name}: no Triton backend; configure kernels.backend=torch")
    return fn


def la2_table_note(gpu: str) -> str:
    """One line for run logs: which tuned LA2 block table GPU model `gpu` runs with."""
    return kernels_module(torch.device("cuda")).la2_config.table_note(gpu)
