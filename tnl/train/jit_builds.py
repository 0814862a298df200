"""Waiting for a DeepSpeed op's JIT build without waiting forever in silence.

DeepSpeed builds an op that was not compiled at install time on first use, through torch.utils.cpp_extension, which
serialises builders with an empty `lock` file in the op's build folder: created by the builder, removed when it is
done, waited on by everyone else with no word and no limit. A builder killed mid-build leaves the file, and every
later start using that op would wait for it forever. (CPU starts build no op at all: tnl.train.dist.skip_shm_op.
On GPUs, ZeRO-Offload's DeepSpeedCPUAdam builds `cpu_adam`.)

Before such a build, `wait_for_build_lock` looks at that file: while a process on this host holds it open (a live
build) we wait, saying for whom; when none does, we wait up to a bound for a builder elsewhere (a cache shared by
several hosts), saying so, then stop with one line that names the file to delete. The file is never removed here:
a builder on another host or in another container is invisible from this one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from deepspeed.git_version_info import installed_ops
from torch.utils.cpp_extension import _get_build_directory

from tnl.train.errors import SetupError

log = logging.getLogger("tnl.train")


def build_lock(op_name: str) -> Path:
    """The lock file torch uses for a JIT build of `op_name` (honours TORCH_EXTENSIONS_DIR)."""
    return Path(_get_build_directory(op_name, verbose=False)) / "lock"


def holders(path: Path) -> list[int]:
    """Pids of the processes on this host (that we may inspect) holding `path` open; [] without /proc."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                st = os.stat(fd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(proc.name))
                break
    return pids


def wait_for_build_lock(op_name: str, bound_s: float = 600.0, poll_s: float = 1.0) -> None:
    """Return once no JIT build lock of `op_name` is in the way (at once when there is none, or the op was compiled
    at install time); SetupError after `bound_s` seconds of a lock that no process on this host holds."""
    if installed_ops.get(op_name, False):
        return
    lock = build_lock(op_name)
    start, said = time.monotonic(), None
    while lock.exists():
        pids = holders(lock)
        news = f"held by pid {', '.join(map(str, pids))}" if pids else "held by no process on this host"
        if news != said:
            log.info("waiting for the JIT build of DeepSpeed's %s op: its lock %s is %s", op_name, lock, news)
            said = news
        if not pids and time.monotonic() - start > bound_s:
            raise SetupError(f"the JIT build lock {lock} of DeepSpeed's {op_name} op was not released in "
                             f"{bound_s:.0f} s and no process on this host holds it: a killed build left it; "
                             "delete it if no other host is building that op, and relaunch")
        time.sleep(poll_s)
