"""Seeds and deterministic algorithms for a run (set before the model is built)."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger("tnl.train")


def seed_everything(seed: int, device_type: str, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms always on CPU, on CUDA when `deterministic`.

    Deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first use: set here (unless the user set it),
    with a log line saying so."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device_type == "cpu" or deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device_type == "cuda" and deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        log.info("trainer.deterministic: set CUBLAS_WORKSPACE_CONFIG=:4096:8 (deterministic cuBLAS needs it)")
