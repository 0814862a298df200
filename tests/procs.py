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
