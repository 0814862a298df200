"""Helpers shared by the kernel and op tests (imported as `numerics`: pytest puts tests/ on sys.path)."""

import torch


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius error ||got - want|| / ||want||, computed in float64."""
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp(min=1e-30)).item()
