"""What a killed run leaves behind must never block, or be mistaken for complete by, the next start: JIT build locks,
partial checkpoints, the run_dir lock of a live run, the data-preparation lock."""

from __future__ import annotations

import os
import signal
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


def _hold_in_child(path: Path, then: str = "time.sleep(600)") -> subprocess.Popen:
    """A child process holding the tnl.locks lock at `path` (started and holding when this returns)."""
    code = ("import os, signal, sys, time\nfrom tnl.locks import hold\nlock = hold(sys.argv[1])\n"
            f"print('held', flush=True)\n{then}\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, env=repo_env(), text=True,
                             stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "held"
    return child


def test_run_dir_of_a_live_run_is_refused_and_freed_by_its_death(tmp_path):
    """Two live runs on one run_dir (e.g. ranks orphaned by a killed launcher, still training) must not both write
    it: the second is refused in one line naming the holder; once the holder dies (SIGKILL), nothing is left that
    blocks the next start."""
    from tnl.train.run import RUN_LOCK, SetupError, lock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    child = _hold_in_child(run / RUN_LOCK)
    try:
        with pytest.raises(SetupError, match=rf"run_dir {run} is in use by a live run \(pid {child.pid} on "):
            lock_run_dir(run)
        r = subprocess.run([sys.executable, "scripts/train.py", "model=tnl_tiny", f"run_dir={run}"], cwd=REPO,
                           env=repo_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
            f"error: run_dir {run} is in use by a live run (pid {child.pid} on "), r.stderr[-3000:]
        assert "Traceback" not in r.stderr and not (run / "checkpoints").exists()
    finally:
        child.kill()
        child.wait()
    lock = lock_run_dir(run)  # the holder was SIGKILLed: its lock went with it
    assert lock is not None and f"pid {os.getpid()} on " in (run / RUN_LOCK).read_text()
    lock.close()


def test_data_preparation_says_whom_it_waits_for_and_cleans_after_a_killed_builder(tmp_path, caplog):
    """A data dir being prepared by another live process: wait, saying for whom, and go on when that process dies
    mid-build (SIGKILL), removing the temporary files a killed builder leaves."""
    import tnl.data

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i} about rivers, stones and {i % 7} houses." for i in range(300)))
    out = tmp_path / "prepared"
    out.mkdir()
    (out / ".shards.tmp-999999" / "train").mkdir(parents=True)  # what a builder killed mid-tokenize leaves
    (out / ".manifest.json.tmp-999999").write_text("{")
    child = _hold_in_child(out / ".lock", then="time.sleep(2)\nos.kill(os.getpid(), signal.SIGKILL)")
    cfg = {"name": "t", "inputs": [str(corpus)], "dir": str(out), "vocab_size": 300, "val_fraction": 0.0,
           "num_workers": 1}
    with caplog.at_level("INFO", logger="tnl.data"):
        tnl.data.prepare(cfg)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert f"waiting for pid {child.pid} on " in caplog.text and f"preparing data in {out}" in caplog.text
    assert tnl.data.is_prepared(cfg)
    assert not list(out.glob(".*.tmp-*")) and caplog.text.count("never finished") == 2


class FileEngine:
    """The two DeepSpeed engine methods tnl.train.checkpoint uses, on a plain state dict (no process group: DeepSpeed
    keeps its groups across process groups, so an in-process engine would clash with other test modules')."""

    def __init__(self):
        import torch

        self.state = {"w": torch.randn(8, 8)}

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        import torch

        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)  # as DeepSpeed does
        torch.save({"module": self.state, **client_state}, Path(save_dir) / tag / "mp_rank_00_model_states.pt")

    def load_checkpoint(self, load_dir, tag, **kw):
        import torch

        path = Path(load_dir) / tag / "mp_rank_00_model_states.pt"
        self.state = torch.load(path, weights_only=False)["module"]
        return str(path), {}


def test_checkpoints_are_never_partial_under_a_step_name(tmp_path, caplog):
    """A save that dies mid-write leaves only a .tmp_ folder; deletions (keep_last, re-saving a step) rename first;
    the next start removes the leftovers, one line each; a published checkpoint damaged afterwards is refused in one
    line that says how to fall back to the previous one."""
    from tnl import checkpoint_format
    from tnl.train import checkpoint

    ckpt = tmp_path / "checkpoints"
    engine = FileEngine()
    save = lambda step, **kw: checkpoint.save(engine, ckpt, step, {"step": step}, {"step": step}, keep_last=2, rank=0,
                                              **kw)
    for step in (1, 2, 3, 3):  # step 3 twice: the second replaces the first
        save(step)
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000002", "step_00000003"]

    def die():
        raise KeyboardInterrupt  # stands in for a SIGKILL mid-write (files written, nothing published)

    with pytest.raises(KeyboardInterrupt):
        save(4, fault_hook=die)
    (ckpt / ".tmp_old_step_00000001").mkdir()  # a deletion cut short (its meta.json still there)
    (ckpt / ".tmp_old_step_00000001" / "meta.json").write_text("{}")
    assert checkpoint_format.complete_tags(ckpt) == ["step_00000002", "step_00000003"]
    assert checkpoint_format.latest_tag(ckpt) == "step_00000003"
    with caplog.at_level("WARNING", logger="tnl.train"):
        checkpoint.clean_partial(ckpt)
    assert caplog.text.count("never finished") == 2 and not list(ckpt.glob(".tmp_*"))

    assert checkpoint.load(engine, ckpt, "step_00000003", 0) == {"step": 3}
    states = next((ckpt / "step_00000003").glob("*model_states.pt"))
    states.write_bytes(states.read_bytes()[:100])  # damaged after publication (disk, hand edit)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(engine, ckpt, "step_00000003", 0)
    message = str(err.value)
    assert "\n" not in message and f"checkpoint {ckpt / 'step_00000003'} is damaged" in message
    assert f"move it out of {ckpt} to resume from the previous one" in message
    (ckpt / "step_00000003").rename(tmp_path / "moved_out")
    with caplog.at_level("WARNING", logger="tnl.train"):
        assert checkpoint_format.latest_tag(ckpt) == "step_00000002"
    assert "names 'step_00000003', which is not a complete checkpoint: using step_00000002" in caplog.text
    assert checkpoint.load(engine, ckpt, "step_00000002", 0) == {"step": 2}


def test_jit_build_lock_wait_says_why_and_ends(tmp_path, monkeypatch, caplog):
    """An op DeepSpeed JIT-builds on first use (cpu_adam for ZeRO-Offload on GPUs): a build lock held by a live
    process is waited for, naming it; one that no process holds (left by a killed build) ends the wait after the
    bound with one line naming the file to delete."""
    from tnl.train.jit_builds import build_lock, wait_for_build_lock
    from tnl.train.run import SetupError

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    lock = build_lock("cpu_adam")
    assert lock == tmp_path / "ext" / "cpu_adam" / "lock"
    wait_for_build_lock("cpu_adam", bound_s=0)  # no lock: no wait

    code = ("import os, sys, time\nfd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)\nprint('held', flush=True)\n"
            "time.sleep(1.5)\nos.close(fd)\nos.remove(sys.argv[1])\n")  # what torch's FileBaton does
    child = subprocess.Popen([sys.executable, "-c", code, str(lock)], text=True, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "held"
    with caplog.at_level("INFO", logger="tnl.train"):
        wait_for_build_lock("cpu_adam", bound_s=0, poll_s=0.05)  # held: waits past the bound until released
    assert child.wait() == 0 and not lock.exists()
    assert f"its lock {lock} is held by pid {child.pid}" in caplog.text

    lock.touch()  # left by a builder killed mid-build
    with pytest.raises(SetupError) as err:
        wait_for_build_lock("cpu_adam", bound_s=0.2, poll_s=0.05)
    assert "\n" not in str(err.value) and f"lock {lock} of DeepSpeed's cpu_adam op was not released" in str(err.value)
    assert "no process on this host holds it" in str(err.value) and lock.exists()  # never removed here
