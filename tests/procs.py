"""Environment for the subprocesses tests start (scripts, launchers)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_env(**extra: str) -> dict:
    """os.environ with the repository first on PYTHONPATH, keeping what was there (a wheel target such as /tmp/site
    on machines where the dependencies are not installed), plus `extra`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}
