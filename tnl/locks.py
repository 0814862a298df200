"""Exclusive file locks that a killed holder cannot leave behind, and that say who holds them.

A marker file ("exists = taken") outlives a process killed while holding it, and whoever comes next waits on it
forever. These locks are flock()s instead: the kernel drops them when the holding process dies, however it dies. The
file only carries the holder's pid and host, for the message of whoever finds the lock taken.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as written by `hold` ('an unknown process' when it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "an unknown process"


def hold(path: Path, waiting: Callable[[str], None] | None = None) -> IO[str] | None:
    """Take the exclusive lock on `path` (created if missing); returns the open file: closing it, or the process
    ending, releases the lock.

    When another live process holds it: without `waiting`, return None at once; with it, call waiting(holder) once
    (to say who and why we wait), then wait for the lock. OSError when the filesystem cannot lock files."""
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is None:
                f.close()
                return None
            waiting(holder(path))
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
    except BaseException:
        f.close()
        raise
    return f
