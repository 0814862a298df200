"""What a killed run leaves behind must never block, or be mistaken for complete by, the next start: JIT build locks,
partial checkpoints, the run_dir lock of a live run, the data-preparation lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import repo_env

REPO = Path(__file__).resolve().parents[1]


def test_stale_jit_build_lock_does_not_block_a_start(tmp_path):
    """torch's JIT builds serialise on an empty lock file only the builder removes; DeepSpeed's CPU start built its
    shared-memory op that way, so a start killed mid-build left `deepspeed_shm_comm/lock` and every later start
    waited forever. With such a lock in place, starting the process group must take seconds and build nothing."""
    ext = tmp_path / "torch_extensions"
    (ext / "deepspeed_shm_comm").mkdir(parents=True)
    (ext / "deepspeed_shm_comm" / "lock").touch()
    code = "from tnl.train import dist; print(dist.init('cpu'))"
    bound = 120  # the import and start take ~5 s on 2 idle cores; a build of the op alone takes ~65 s
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=bound,
                           env=repo_env(TORCH_EXTENSIONS_DIR=str(ext), OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"dist.init('cpu') still running after {bound} s with a stale {ext}/deepspeed_shm_comm/lock")
    assert r.returncode == 0 and "world_size=1" in r.stdout, r.stderr[-3000:]
    assert sorted(str(p.relative_to(ext)) for p in ext.rglob("*")) == ["deepspeed_shm_comm",
                                                                        "deepspeed_shm_comm/lock"]  # nothing built
