"""compare_runs: EMA smoothing, interpolation at token counts, the table's numbers, the PNG, bad inputs."""

import json
import math
from pathlib import Path

import pytest

from tnl.eval import compare


def write_run(root: Path, name: str, losses: list[float], vals: dict[int, float], tps: list[float],
              mfu: list[float | None], tokens_per_step: int = 1000, arch: str | None = "tnl") -> Path:
    run = root / name
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses):
            step = i + 1
            rec = {"step": step, "tokens": step * tokens_per_step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0,
                   "tokens_per_s": tps[i], "mfu": mfu[i]}
            if step in vals:
                rec["val_loss"] = vals[step]
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 99, "tok')  # a torn last line, as a live run may leave
    if arch:
        (run / "config.yaml").write_text(f"model:\n  arch: {arch}\n  vocab_size: 64\n  hidden_size: 16\n"
                                         "  num_hidden_layers: 1\n  num_attention_heads: 2\n"
                                         "  intermediate_size: 32\n")
    return run


def test_ema_is_bias_corrected():
    x = [4.0, 2.0, 3.0]
    a = 0.5
    s1 = 0.5 * 4.0
    s2 = a * s1 + 0.5 * 2.0
    s3 = a * s2 + 0.5 * 3.0
    assert compare.ema(x, a) == pytest.approx([s1 / 0.5, s2 / 0.75, s3 / 0.875])
    assert compare.ema([5.0] * 4, 0.9) == pytest.approx([5.0] * 4)  # a constant stays constant
    assert compare.ema(x, 0.0) == x
    with pytest.raises(ValueError, match="smoothing"):
        compare.ema(x, 1.0)


def test_interpolate():
    xs, ys = [10.0, 20.0, 40.0], [1.0, 3.0, 2.0]
    assert compare.interpolate(xs, ys, 15) == pytest.approx(2.0)
    assert compare.interpolate(xs, ys, 30) == pytest.approx(2.5)
    assert compare.interpolate(xs, ys, 40) == 2.0 and compare.interpolate(xs, ys, 10) == 1.0
    assert compare.interpolate(xs, ys, 5) is None and compare.interpolate(xs, ys, 41) is None


def test_table_numbers_and_png(tmp_path, capsys):
    # run a: constant train loss 3 (EMA = 3 everywhere); val 3.5 at step 4, 3.0 at step 8
    a = write_run(tmp_path, "a", [3.0] * 8, {4: 3.5, 8: 3.0}, [100, 200, 210, 190, 200, 205, 195, 200], [None] * 8)
    # run b: train loss falls linearly, no smoothing asked below; 16 steps of 500 tokens (same 8000 tokens)
    b = write_run(tmp_path, "b", [4.0 - 0.1 * i for i in range(16)], {16: 2.5}, [50.0] * 16, [0.25] * 16,
                  tokens_per_step=500, arch="llama")
    out = tmp_path / "res" / "cmp"
    assert compare.main([str(a), str(b), "--out", str(out), "--smoothing", "0", "--at", "2000,6000"]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "res" / "cmp.md").read_text()
    assert printed in md and md.startswith("![loss curves](cmp.png)")
    rows = {line.split("|")[1].strip().split()[0]: [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| a") or line.startswith("| b")}
    # columns: tokens, train@2K, train@6K, val@2K, val@6K, final val, final ppl, tokens/s, MFU
    assert rows["a"] == ["8K", "3.0000", "3.0000", "", "3.2500", "3.0000", f"{math.exp(3.0):.2f}", "200", ""]
    # b: tokens 500*i, loss 4 - 0.1*(i-1): at 2000 tokens (step 4) 3.7; at 6000 (step 12) 2.9
    assert rows["b"] == ["8K", "3.7000", "2.9000", "", "", "2.5000", f"{math.exp(2.5):.2f}", "50", "25.0%"]
    assert "tnl" in md and "llama" in md  # labels from config.yaml
    png = (tmp_path / "res" / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_default_marks_and_smoothing(tmp_path):
    a = write_run(tmp_path, "a", [5.0, 1.0, 1.0, 1.0], {}, [1.0] * 4, [None] * 4, arch=None)
    runs = [compare.load_run_log(a)]
    assert runs[0].label == "a"
    assert compare.default_token_marks(runs) == [1000.0, 2000.0, 4000.0]
    s = compare.summary(runs[0], [4000.0], smoothing=0.5)
    assert s["train"][0] == pytest.approx(compare.ema([5.0, 1.0, 1.0, 1.0], 0.5)[-1]) and s["train"][0] > 1.0
    assert s["final_val_ppl"] is None and s["mfu"] is None


@pytest.mark.parametrize("setup, argv, message", [
    ("none", ["{tmp}/missing"], "no metrics.jsonl"),
    ("empty", ["{tmp}/e"], "no records"),
    ("ok", ["{tmp}/a", "--labels", "x,y"], "--labels"),
    ("ok", ["{tmp}/a", "--at", "1e3,abc"], "--at"),
])
def test_errors_are_one_line(tmp_path, capsys, setup, argv, message):
    if setup == "empty":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "metrics.jsonl").write_text("\n")
    if setup == "ok":
        write_run(tmp_path, "a", [1.0, 1.0], {}, [1.0, 1.0], [None, None])
    out = tmp_path / "o"
    rc = compare.main([a.format(tmp=tmp_path) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.md").exists()
