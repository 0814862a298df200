"""Loss curves of several runs side by side: a PNG (train and validation loss against tokens) and a markdown table.

    runs = [load_run_log(d) for d in run_dirs]      # metrics.jsonl + config.yaml of each run
    write_plot(runs, "cmp.png"); text = markdown_table(runs, at_tokens)

Train loss is smoothed with a bias-corrected exponential moving average (TensorBoard's smoothing) before it is
plotted or read off at a token count; validation loss is shown as logged. A value "at N tokens" is linearly
interpolated between the logged points around N (blank outside the logged range). tokens/s and MFU are medians over
the logged steps after the first (which includes start-up and compilation).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tnl.eval.lm import EvalError

log = logging.getLogger("tnl.eval")


@dataclass
class RunLog:
    path: Path
    label: str
    records: list[dict]
    config: dict = field(default_factory=dict)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(tokens, values) of the records that carry a finite `key`, in logged order."""
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(r.get("tokens"), (int, float)):
                xs.append(float(r["tokens"]))
                ys.append(float(v))
        return xs, ys


def ema(values: list[float], smoothing: float) -> list[float]:
    """Bias-corrected EMA: s_t = a*s_{t-1} + (1-a)*x_t, divided by (1 - a^t) so the start is not pulled to 0."""
    if not 0.0 <= smoothing < 1.0:
        raise EvalError(f"smoothing must be in [0, 1), got {smoothing}")
    out, s = [], 0.0
    for t, x in enumerate(values, 1):
        s = smoothing * s + (1.0 - smoothing) * x
        out.append(s / (1.0 - smoothing**t))
    return out


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of (xs, ys) at x; None outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return y1 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]  # x == xs[0] == xs[-1]


def _label(run_dir: Path, cfg: dict) -> str:
    model = cfg.get("model") or {}
    arch = model.get("arch")
    if not arch:
        return run_dir.name
    size = ""
    try:
        from tnl.models import count_parameters

        size = f" {count_parameters(model) / 1e6:.1f}M"
    except (ValueError, TypeError):
        pass
    return f"{run_dir.name} ({arch}{size})"


def load_run_log(run_dir: str | Path, label: str | None = None) -> RunLog:
    """A run's metrics.jsonl (a torn last line, as a live run may leave, is skipped) and its config.yaml."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise EvalError(f"{run_dir} has no metrics.jsonl (not a run dir?)")
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and "tokens" in rec:
            records.append(rec)
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    if not records:
        raise EvalError(f"{path} has no records with a 'tokens' field")
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False) or {}
    return RunLog(run_dir, label or _label(run_dir, cfg), records, cfg)


def _median_after_first(values: list) -> float | None:
    vals = [v for v in values[1:] or values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def summary(run: RunLog, at_tokens: list[float], smoothing: float) -> dict:
    """Numbers of one table row."""
    tx, ty = run.series("loss")
    vx, vy = run.series("val_loss")
    sy = ema(ty, smoothing) if ty else []
    return {
        "label": run.label,
        "tokens": max(float(r["tokens"]) for r in run.records),
        "train": [interpolate(tx, sy, t) for t in at_tokens],
        "val": [interpolate(vx, vy, t) for t in at_tokens],
        "final_val_loss": vy[-1] if vy else None,
        "final_val_ppl": math.exp(min(vy[-1], 700.0)) if vy else None,
        "tokens_per_s": _median_after_first([r.get("tokens_per_s") for r in run.records]),
        "mfu": _median_after_first([r.get("mfu") for r in run.records]),
    }


def default_token_marks(runs: list[RunLog]) -> list[float]:
    """1/4, 1/2 and all of the tokens of the shortest run."""
    end = min(max(float(r["tokens"]) for r in run.records) for run in runs)
    return [end / 4, end / 2, end]


def fmt_tokens(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _f(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def markdown_table(runs: list[RunLog], at_tokens: list[float], smoothing: float = 0.9) -> str:
    rows = [summary(r, at_tokens, smoothing) for r in runs]
    marks = [fmt_tokens(t) for t in at_tokens]
    head = (["run", "tokens"] + [f"train loss @{m}" for m in marks] + [f"val loss @{m}" for m in marks]
            + ["final val loss", "final val ppl", "tokens/s", "MFU"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        cells = ([s["label"], fmt_tokens(s["tokens"])] + [_f(v, ".4f") for v in s["train"]]
                 + [_f(v, ".4f") for v in s["val"]]
                 + [_f(s["final_val_loss"], ".4f"), _f(s["final_val_ppl"], ".2f"), _f(s["tokens_per_s"], ",.0f"),
                    "" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"])
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nTrain loss: EMA-smoothed (smoothing {smoothing}), linearly interpolated at each token count; val loss "
            "as logged, interpolated between evaluations (blank: outside the logged range). tokens/s and MFU: "
            "medians over logged steps after the first.\n")
    return "\n".join(lines) + "\n" + note


def write_plot(runs: list[RunLog], path: str | Path, smoothing: float = 0.9, title: str | None = None) -> Path:
    """Train (EMA, solid) and validation (dashed, markers) loss against tokens (log scale), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        c = colours[i % len(colours)]
        tx, ty = run.series("loss")
        if tx:
            ax.plot(tx, ema(ty, smoothing), color=c, lw=1.5, label=f"{run.label} train")
        vx, vy = run.series("val_loss")
        if vx:
            ax.plot(vx, vy, color=c, lw=1.2, ls="--", marker="o", ms=3, label=f"{run.label} val")
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss vs tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """scripts/compare_runs.py: RUN... -> OUT.png + OUT.md (the table is printed too)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="scripts/compare_runs.py", description="Loss curves of runs side by side.")
    p.add_argument("runs", nargs="+", help="run dirs (each with metrics.jsonl)")
    p.add_argument("--out", default="compare", help="output prefix: writes OUT.png and OUT.md (default: compare)")
    p.add_argument("--labels", help="comma-separated labels, one per run (default: dir name, arch, size)")
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA smoothing of the train loss in [0, 1)")
    p.add_argument("--at", help="comma-separated token counts for the table, e.g. 1e6,1e7 (default: 1/4, 1/2, "
                                "all of the shortest run)")
    p.add_argument("--title", help="plot title")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        labels = args.labels.split(",") if args.labels else [None] * len(args.runs)
        if len(labels) != len(args.runs):
            raise EvalError(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
        runs = [load_run_log(r, lab) for r, lab in zip(args.runs, labels)]
        try:
            marks = [float(x) for x in args.at.split(",")] if args.at else default_token_marks(runs)
        except ValueError:
            raise EvalError(f"--at must be comma-separated numbers, got {args.at!r}") from None
        table = markdown_table(runs, marks, args.smoothing)
        png = write_plot(runs, f"{args.out}.png", args.smoothing, args.title)
        md = Path(f"{args.out}.md")
        tmp = md.with_name(f".{md.name}.tmp")
        tmp.write_text(f"![loss curves]({png.name})\n\n{table}", encoding="utf-8")
        tmp.replace(md)
    except (EvalError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(table, end="")
    log.info("wrote %s and %s", png, md)
    return 0
