"""scripts/scaling_report.py on synthetic metrics: per-GPU throughput, efficiency and the loss columns."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import scaling_report  # noqa: E402


def _run(tmp_path: Path, name: str, rate: float, losses: list[float]) -> Path:
    d = tmp_path / name
    d.mkdir()
    recs = [{"step": 10 * (i + 1), "loss": loss, "tokens_per_s": (rate / 4 if i < 2 else rate), "mfu": 0.3}
            for i, loss in enumerate(losses)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_efficiency_and_losses(tmp_path, capsys):
    one = _run(tmp_path, "one", 1000.0, [5.0, 4.0, 3.0, 2.5])
    two = _run(tmp_path, "two", 1800.0, [5.1, 4.1, 3.1, 2.6])
    out = tmp_path / "rep" / "scale"
    assert scaling_report.main([f"m:1:{one}", f"m:2:{two}", "--out", str(out), "--loss-steps", "20,40"]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["tokens_per_s_per_gpu"] for r in rows] == [1000.0, 900.0]  # warm-up records are left out
    assert rows[1]["efficiency"] == pytest.approx(0.9)
    assert rows[1]["loss_at"] == {"20": 4.1, "40": 2.6}
    assert "| m | 2 | 1,800 | 900 | 90.0% |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_bad_run_spec_and_missing_metrics(tmp_path, capsys):
    with pytest.raises(SystemExit, match="MODEL:GPUS:RUN_DIR"):
        scaling_report.main(["nogpus", "--out", str(tmp_path / "x")])
    assert scaling_report.main([f"m:1:{tmp_path}", "--out", str(tmp_path / "x")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
