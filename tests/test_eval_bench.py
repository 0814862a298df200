"""benchmarks/bench_train.py: --help, its CPU smoke mode end to end (JSON + markdown + PNG, named by results_io's
rule, run from outside the repository), and a bad model name."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(REPO / "benchmarks" / "bench_train.py")]


def test_help():
    proc = subprocess.run(SCRIPT + ["--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--seq-lens" in proc.stdout and "--cpu-smoke" in proc.stdout


def test_cpu_smoke_writes_results(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(SCRIPT + ["--cpu-smoke", "--out", str(out), "--tag", "smoke"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    stem = files[0].rsplit(".", 1)[0]
    assert re.fullmatch(r"speed_vs_length_tnl_tiny_vs_llama_tiny_smoke_cpu_\d{8}T\d{4}Z", stem), files
    assert files == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["meta"]["command"].startswith("python benchmarks/bench_train.py --cpu-smoke")
    assert report["meta"]["gpu"] == "cpu" and report["meta"]["compile"] is False
    rows = report["results"]
    assert [(r["model"], r["seq_len"], r["micro_batch"]) for r in rows] == [
        ("tnl_tiny", 32, 4), ("tnl_tiny", 64, 2), ("llama_tiny", 32, 4), ("llama_tiny", 64, 2)]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["tokens_per_step"] == 128 for r in rows)
    assert all(5.0 < r["loss"] < 12.0 for r in rows)  # random init on a 4096 vocab: near ln(4096) = 8.3
    md = next(out.glob("*.md")).read_text()
    assert "| 32 |" in md and "tnl_tiny / llama_tiny" in md and md in proc.stdout
    assert next(out.glob("*.png")).read_bytes()[:4] == b"\x89PNG"


def test_unknown_model_is_one_error_line(tmp_path):
    proc = subprocess.run(SCRIPT + ["--cpu-smoke", "--models", "tnl_tiny,nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
def test_gpu_sweep_small(tmp_path):
    proc = subprocess.run(SCRIPT + ["--models", "tnl_tiny,llama_tiny", "--seq-lens", "512,1024", "--tokens", "2048",
                                    "--warmup", "1", "--steps", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["results"]
    assert len(rows) == 4 and all(r["status"] == "ok" and r["peak_mem_gib"] > 0 for r in rows)


def test_pinned_sdpa_backend_turns_off_the_compile_caches():
    """NAME@flash must not reuse graphs compiled under NAME@cudnn: the caches' keys lack SDPA's backend flags."""
    import torch
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_train
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    before = (inductor_config.fx_graph_cache, functorch_config.enable_autograd_cache)
    with bench_train.sdpa_context("flash"):
        assert not inductor_config.fx_graph_cache and not functorch_config.enable_autograd_cache
        assert torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.cudnn_sdp_enabled()
    with bench_train.sdpa_context("cudnn"):
        assert torch.backends.cuda.cudnn_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    assert (inductor_config.fx_graph_cache, functorch_config.enable_autograd_cache) == before
    with bench_train.sdpa_context(None):
        assert (inductor_config.fx_graph_cache, functorch_config.enable_autograd_cache) == before
