"""tnl.train.profile: the top-kernel table counts GPU kernels only, and the trainer's profiler writes it once, after
the steps it was asked for (trainer.profile_steps / profile_after)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import repo_env

from tnl.config import ConfigError, compose
from tnl.train.profile import StepProfiler, kernel_table, top_kernels


def _event(key, device, us, count=1):
    return SimpleNamespace(key=key, device_type=SimpleNamespace(name=device), self_device_time_total=us, count=count)


def test_top_kernels_counts_kernels_not_their_launchers_or_markers():
    events = [_event("aten::mm", "CPU", 9000.0, 4), _event("nvjet_gemm", "CUDA", 6000.0, 4),
              _event("triton_poi_fused_mul", "CUDA", 3000.0, 2), _event("Command Buffer Full", "CUDA", 5000.0),
              _event("triton_poi_fused_mul", "CPU", 3000.0, 2), _event("idle", "CUDA", 0.0)]
    prof = SimpleNamespace(key_averages=lambda: events)
    rows = top_kernels(prof, steps=2)
    assert [r["kernel"] for r in rows] == ["nvjet_gemm", "triton_poi_fused_mul"]
    assert rows[0]["ms_per_step"] == pytest.approx(3.0) and rows[1]["ms_per_step"] == pytest.approx(1.5)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    table = kernel_table(rows, "Top")
    assert table[0] == "Top (GPU kernel time 4.5 ms per step):" and "| `nvjet_gemm` | 4 | 3.00 | 66.7% |" in table


def test_step_profiler_writes_once_after_its_last_step(tmp_path):
    path = tmp_path / "profile.md"
    prof = StepProfiler(path, first_step=2, steps=2)
    for done in range(6):
        prof.before_step(done)
        assert (prof.prof is not None) == (2 <= done < 4)
        prof.after_step(done + 1)
        assert path.exists() == (done + 1 >= 4)
    assert path.read_text().startswith("Top GPU kernels of steps 3-4") and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        StepProfiler(path, first_step=0, steps=0)


def test_profile_keys_are_checked():
    assert compose([]).trainer.profile_steps == 0
    with pytest.raises(ConfigError, match="trainer.profile_steps must be >= 0"):
        compose(["trainer.profile_steps=-1"])


@pytest.mark.slow  # a real (tiny) training run on CPU, ~30 s
def test_training_run_writes_its_profile(tmp_path):
    run = tmp_path / "run"
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    cmd = [sys.executable, str(script), "experiment=demo", f"run_dir={run}", f"data.dir={tmp_path / 'data'}",
           "trainer.max_steps=3", "trainer.profile_steps=1", "trainer.profile_after=1", "trainer.export_hf=false",
           "trainer.eval_every=0"]
    r = subprocess.run(cmd, env=repo_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "profile.md").read_text().startswith("Top GPU kernels of steps 2-2")
