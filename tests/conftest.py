"""Shared pytest setup: CPU tests run on a quiet, deterministic torch."""

import os

import pytest

# Tests must never reach a model hub, and must not be slowed by wandb or tokenizer thread pools.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch  # importing torch does not import triton; torch._dynamo and transformers do

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


# Triton chooses interpreter or compiler when functions are decorated: for its own tl.* library that is when triton
# is first imported (e.g. by `import tnl` -> transformers -> torch._dynamo). So on a machine without CUDA, where every
# Triton kernel must run under the interpreter, say so before any test module is imported (collection order varies).
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def kernel_settings(monkeypatch):
    """Every test starts from the default kernel settings (tnl.ops.settings: backend, la2_algo, fused_loss all
    auto, no environment override) and whatever it configures is undone after it."""
    for var in ("TNL_KERNEL_BACKEND", "TNL_LA2_ALGO", "TNL_FUSED_CE"):
        monkeypatch.delenv(var, raising=False)
    from tnl import ops

    with ops.using(backend="auto", la2_algo="auto", fused_loss="auto"):
        yield


@pytest.fixture
def poison_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled floating tensors, so an output element a kernel or op fails to
    write cannot pass a comparison. Use with `pytestmark = pytest.mark.usefixtures("poison_empty")`."""
    import torch

    # torch caches its set of factory functions on first use (for `with torch.device(...)` and dynamo); filled while
    # the stand-ins below are installed, it would keep them, and later meta-device builds would allocate for real.
    try:
        from torch.utils._device import _device_constructors

        _device_constructors()
    except ImportError:  # pragma: no cover - a torch without this private cache has nothing to fill
        pass
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_like(*a, **kw)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[str]:
    """The demo corpus prepared once per test module; the overrides that point a training run at it."""
    import tnl.data
    from tnl.config import compose, to_dict

    overrides = ["data=demo", f"data.dir={tmp_path_factory.mktemp('demo') / 'prepared'}"]
    tnl.data.prepare(to_dict(compose(overrides).data))
    return overrides


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where CUDA is absent instead of failing them (`make test` deselects them anyway)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
