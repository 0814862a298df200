"""scripts/reproduce.py: every figure redraws on CPU from the committed results into the committed markdown (byte for
byte) and a PNG; the tables' arithmetic (gap vs seed spread, extrapolation, chance) on made-up result files; file
naming; clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import repo_env

from tnl.eval import reproduce
from tnl.eval.figures import loss_table
from tnl.eval.figures_eval import extrapolation_table, near_chance, tasks_table
from tnl.eval.lm import EvalError
from tnl.eval.repro_results import find, parse_name, short_gpu, stem_for

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results" / "reproduction"


@pytest.mark.parametrize("figure", ["speed", "loss", "extrapolation", "tasks"])
def test_committed_figures_redraw_on_cpu(figure, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the default sources are relative to the repository root
    assert reproduce.main([figure, "--redraw", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{figure}.md").read_text() == (COMMITTED / f"{figure}.md").read_text(), (
        f"benchmarks/results/reproduction/{figure}.md is stale: run python scripts/reproduce.py {figure} --redraw")
    if figure != "tasks":
        png = (tmp_path / f"{figure}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert (COMMITTED / f"{figure}.png").is_file()


def test_script_redraws_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/reproduce.py", "loss", "--redraw", "--out", str(tmp_path)],
                          cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "loss.md").read_text() == (COMMITTED / "loss.md").read_text()


def write_metrics(path: Path, vals: list[float], tokens_per_eval: int = 1000) -> None:
    with open(path, "w") as f:
        for i, v in enumerate(vals, 1):
            f.write(json.dumps({"step": i, "tokens": i * tokens_per_eval, "loss": v + 0.1}) + "\n")
            f.write(json.dumps({"step": i, "tokens": i * tokens_per_eval, "loss": v + 0.1, "val_loss": v}) + "\n")
        f.write('{"step": 99, "tok')  # a torn last line, as a live run leaves


def test_loss_table_gap_against_seed_spread(tmp_path):
    finals = {("tnl", 1): [5.0, 4.20], ("tnl", 2): [5.1, 4.23], ("llama", 1): [5.4, 4.41], ("llama", 2): [5.3, 4.40]}
    for (m, s), vals in finals.items():
        write_metrics(tmp_path / f"repro_small_{m}_seed{s}_H100_20260101T0000Z.metrics.jsonl", vals)
    # an older run of the same (model, seed) is ignored: the newest stamp wins
    write_metrics(tmp_path / "repro_small_tnl_seed1_H100_20250101T0000Z.metrics.jsonl", [9.0, 9.0])
    md, data = loss_table(tmp_path)
    st, su = data["stats"], data["summary"]
    assert st["tnl"]["mean"] == pytest.approx(4.215) and st["tnl"]["spread"] == pytest.approx(0.03)
    assert st["llama"]["mean"] == pytest.approx(4.405) and st["llama"]["spread"] == pytest.approx(0.01)
    assert su["gap"] == pytest.approx(0.19) and su["max_spread"] == pytest.approx(0.03)
    assert su["closest_pair_gap"] == pytest.approx(4.40 - 4.23) and su["gap_over_spread"] == pytest.approx(0.19 / 0.03)
    assert "| TNL | 4.2000 | 4.2300 | 4.2150 | 0.0300 |" in md and "6.3x smaller than the gap" in md
    first = data["curve"][0]
    assert first["gap"] == pytest.approx(5.35 - 5.05) and first["tnl_spread"] == pytest.approx(0.1)


def eval_report(losses: dict[int, float], edges=(0, 4, 8)) -> dict:
    results = []
    for L, loss in losses.items():
        parts = [{"from": a, "to": min(b, L), "tokens": 1, "loss": loss + a / 100}
                 for a, b in zip(edges, edges[1:]) if a < L]
        results.append({"context": L, "loss": loss, "perplexity": 2.718281828 ** loss, "by_position": parts})
    return {"device": "cuda", "dtype": "bfloat16",
            "contexts": {"windows": "disjoint", "tokens": 8, "train_seq_len": 4, "position_edges": list(edges),
                         "results": results},
            "tasks": {"limit": 500, "backend": "tnl", "piqa": {"acc": 0.51, "acc_norm": 0.49, "n": 500},
                      "arc_challenge": {"acc": 0.17, "acc_norm": 0.30, "n": 500},
                      "lambada_openai": {"acc": 0.0, "perplexity": 1.5e6, "n": 500}}}


def test_extrapolation_and_tasks_tables(tmp_path):
    (tmp_path / "repro_small_tnl_seed5_H100_20260101T0000Z.eval.json").write_text(
        json.dumps(eval_report({4: 3.0, 8: 2.9})))
    (tmp_path / "repro_small_llama_seed5_H100_20260101T0000Z.eval.json").write_text(
        json.dumps(eval_report({4: 3.1, 8: 4.5})))
    md, data = extrapolation_table(tmp_path)
    assert "| 4 | 3.0000 | 20.09 | 3.1000 | 22.20 |" in md and "| 8 | 2.9000 | 18.17 | 4.5000 | 90.02 |" in md
    assert "| 4-8 | 2.9400 | 4.5400 |" in md and data["train_lens"] == [4]
    md, data = tasks_table(tmp_path)
    assert "| piqa | 0.50 | ~**0.510** / 0.490 |" in md
    assert "| arc_challenge | 0.25 | 0.170 / **0.300** |" in md  # acc_norm 0.30 is > 2 SE above 0.25
    assert "acc 0.000, ppl 1.5e+06" in md and "At chance for every checkpoint: piqa." in md


def test_near_chance_is_two_standard_errors():
    # p = 0.25, n = 500: SE = 0.01936, two SE = 0.0387
    assert near_chance(0.288, "hellaswag", 500) and not near_chance(0.29, "hellaswag", 500)
    assert near_chance(0.5, "piqa", 10) and not near_chance(0.37, "boolq", 500)


def test_names_and_errors(tmp_path):
    stem = stem_for("repro_small", "tnl", 1235, "NVIDIA H100 80GB HBM3")
    assert stem.startswith("repro_small_tnl_seed1235_H100_")
    f = parse_name(tmp_path / f"{stem}.eval.json")
    assert (f.model, f.seed, f.gpu, f.kind, f.stem) == ("tnl", 1235, "H100", "eval.json", stem)
    assert parse_name("notes.md") is None and short_gpu("NVIDIA H200") == "H200"
    with pytest.raises(EvalError, match="model must be one of"):
        stem_for("repro_small", "gpt", 1, "x")
    assert find(tmp_path / "missing", "eval.json") == {}
    for fig in ("loss", "extrapolation", "tasks"):
        with pytest.raises(EvalError, match=f"{fig}: no repro_small"):
            reproduce.run(reproduce.build_parser().parse_args([fig, "--redraw", "--results", str(tmp_path)]))
    args = reproduce.build_parser().parse_args(["extrapolation", "--measure", "--results", str(tmp_path),
                                                "--runs", str(tmp_path / "runs"), "--models", "tnl", "--seeds", "3"])
    with pytest.raises(EvalError, match="has no checkpoints: train it first"):
        reproduce.run(args)
    assert reproduce.main(["loss", "--redraw", "--results", str(tmp_path / "nope")]) == 1
    assert reproduce.main(["loss", "--redraw", "notanoverride"]) == 2


@pytest.mark.slow  # bench_train with --compile: inductor on CPU, ~1 minute
def test_speed_measuring_path_on_cpu(tmp_path, monkeypatch):
    """`speed` on a GPU runs benchmarks/bench_train.py and redraws from its new result; here with its CPU smoke mode."""
    monkeypatch.chdir(REPO)
    argv = ["speed", "--measure", "--results", str(tmp_path), "--speed-args",
            "--cpu-smoke --models tnl_tiny,llama_tiny"]
    assert reproduce.main(argv) == 0
    (measured,) = tmp_path.glob(f"speed_vs_length_*_{reproduce.SPEED_TAG}_*.json")
    md = (tmp_path / "speed.md").read_text()
    assert f"`{measured.name}`" in md and "| 32 |" in md and "tnl_tiny tokens/s" in md
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"
