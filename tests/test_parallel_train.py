"""Training with parallel.sequence=2 (two gloo ranks under torchrun, one sequence split between them) matches the same
run on one process step for step: same data, same loss at every step (fp32), same gradient norm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port, repo_env

from tnl.config import ConfigError, compose

REPO = Path(__file__).resolve().parents[1]
RUN = ["model=tnl_tiny", "trainer.seq_len=32", "trainer.micro_batch_size=2", "trainer.max_steps=4",
       "trainer.eval_every=0", "trainer.save_every=0", "trainer.export_hf=false", "trainer.cu_seqlens=true",
       "deepspeed.precision=fp32", "optim.lr=1e-2", "optim.warmup_steps=1"]


def _launch(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/train.py", *args] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
        "--master_port", str(free_port()), "scripts/train.py", *args]
    env = repo_env(OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _train(args: list[str], ranks: int) -> list[dict]:
    r = _launch(args, ranks)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run_dir=")))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sequence_parallel_training_matches_one_rank(demo, tmp_path):
    one = _train([*RUN, *demo, f"run_dir={tmp_path / 'p1'}"], ranks=1)
    two = _train([*RUN, *demo, f"run_dir={tmp_path / 'p2'}", "parallel.sequence=2", "deepspeed=zero1"], ranks=2)
    assert [m["step"] for m in two] == [1, 2, 3, 4]
    assert [m["tokens"] for m in two] == [m["tokens"] for m in one]  # one replica: the same tokens per step
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * abs(a["grad_norm"]), (a, b)
    assert one[-1]["loss"] < one[0]["loss"]  # the steps did something
    # resuming that run with another sequence-parallel layout is refused (the loaders' ranks would not line up)
    r = _launch([*RUN, *demo, f"run_dir={tmp_path / 'p2'}", "parallel.sequence=1", "deepspeed=zero1",
                 "trainer.max_steps=6"], ranks=2)
    assert r.returncode != 0 and "resume with the same parallel.sequence" in r.stderr, r.stderr[-2000:]


def test_sequence_and_data_parallel_grid(demo, tmp_path):
    """4 ranks = 2 replicas x 2-rank sequence groups against 2 plain data-parallel ranks: same data, same steps."""
    dp = _train([*RUN, *demo, f"run_dir={tmp_path / 'dp'}", "deepspeed=zero1", "trainer.max_steps=3"], ranks=2)
    grid = _train([*RUN, *demo, f"run_dir={tmp_path / 'grid'}", "deepspeed=zero1", "trainer.max_steps=3",
                   "parallel.sequence=2"], ranks=4)
    assert [m["tokens"] for m in grid] == [m["tokens"] for m in dp] == [128, 256, 384]
    for a, b in zip(dp, grid):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * abs(a["grad_norm"]), (a, b)


def test_sequence_parallel_config_errors():
    with pytest.raises(ConfigError, match="parallel.sequence must be >= 1"):
        compose(["parallel.sequence=0"])
    with pytest.raises(ConfigError, match="needs a TNL model"):
        compose(["model=llama_tiny", "parallel.sequence=2"])
