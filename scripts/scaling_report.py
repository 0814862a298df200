"""Data-parallel scaling table of training runs: tokens/s per GPU, efficiency against the 1-GPU run of the same
model, and the loss trend (loss at fixed steps, plus a PNG of loss against step).

    python scripts/scaling_report.py --out benchmarks/results/scaling \\
        tnl_385m:1:runs/s385_1 tnl_385m:2:runs/s385_2 tnl_385m:4:runs/s385_4

Each run is MODEL:GPUS:RUN_DIR (RUN_DIR holds the trainer's metrics.jsonl). Throughput is the median of the logged
tokens_per_s after the first two records (compilation, warm-up); tokens_per_s in metrics.jsonl counts all ranks.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def load(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_run(spec: str) -> tuple[str, int, Path]:
    try:
        model, gpus, run_dir = spec.split(":", 2)
        return model, int(gpus), Path(run_dir)
    except ValueError:
        raise SystemExit(f"scaling_report: error: run {spec!r} is not MODEL:GPUS:RUN_DIR") from None


def summarize(runs: list[tuple[str, int, Path]], loss_steps: list[int]) -> list[dict]:
    rows = []
    for model, gpus, run_dir in runs:
        recs = [r for r in load(run_dir) if "tokens_per_s" in r]
        steady = recs[2:] or recs
        tps = statistics.median(r["tokens_per_s"] for r in steady) if steady else float("nan")
        mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
        by_step = {r["step"]: r["loss"] for r in recs}
        rows.append({"model": model, "gpus": gpus, "run_dir": str(run_dir), "steps": recs[-1]["step"] if recs else 0,
                     "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / gpus,
                     "mfu": statistics.median(mfu) if mfu else None,
                     "loss_at": {s: by_step.get(s) for s in loss_steps},
                     "curve": [(r["step"], r["loss"]) for r in recs]})
    for row in rows:
        base = [r for r in rows if r["model"] == row["model"] and r["gpus"] == 1]
        row["efficiency"] = row["tokens_per_s_per_gpu"] / base[0]["tokens_per_s_per_gpu"] if base else None
    return rows


def markdown(rows: list[dict], loss_steps: list[int], title: str) -> str:
    head = ["model", "GPUs", "tokens/s", "tokens/s/GPU", "scaling efficiency", "MFU"]
    head += [f"loss @{s}" for s in loss_steps]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["gpus"]), f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s_per_gpu']:,.0f}",
                 "" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%",
                 "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"]
        cells += ["" if r["loss_at"][s] is None else f"{r['loss_at'][s]:.4f}" for s in loss_steps]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "tokens/s: median of the logged rates after the first two records, all ranks together; efficiency: "
              "tokens/s/GPU over the 1-GPU run of the same model."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), dpi=110, squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in rows:
            if r["model"] == model and r["curve"]:
                ax.plot(*zip(*r["curve"]), label=f"{r['gpus']} GPU" + ("s" if r["gpus"] > 1 else ""))
        ax.set_title(model)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="MODEL:GPUS:RUN_DIR")
    p.add_argument("--out", required=True, help="output prefix (writes PREFIX.json, .md, .png)")
    p.add_argument("--loss-steps", default="50,100,150,200", help="steps at which to report the loss")
    p.add_argument("--title", default="Data-parallel scaling")
    args = p.parse_args(argv)
    loss_steps = [int(s) for s in args.loss_steps.split(",") if s.strip()]
    try:
        rows = summarize([parse_run(s) for s in args.runs], loss_steps)
    except FileNotFoundError as err:
        print(f"scaling_report: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, loss_steps, args.title)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in rows],
                                                   indent=1))
    plot(rows, out.with_suffix(".png"))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
