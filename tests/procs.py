"""Environment for the subprocesses tests start (scripts, launchers)."""

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_env(**extra: str) -> dict:
    """os.environ with the repository first on PYTHONPATH, keeping what was there (a wheel target such as /tmp/site
    on machines where the dependencies are not installed), plus `extra`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def free_port() -> int:
    """A TCP port free on localhost now (for a launcher's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_entry(rank: int, world: int, init_file: str, fn, args: tuple) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, world: int, *args) -> None:
    """Run fn(rank, world, *args) in `world` processes joined in a gloo process group (fn: a module-level function,
    so the spawned processes can import it); an exception in any rank fails the caller."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_entry, args=(world, os.path.join(tmp, "init"), fn, args), nprocs=world, join=True)
