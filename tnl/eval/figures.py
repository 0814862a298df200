"""The reproduction's figures and tables from result files: markdown text and PNG plots, no measuring.

    md, data = speed_table(paths)            # training tokens/s against context (benchmarks/bench_train.py JSONs)
    md, data = loss_table(results_dir)       # two seeds per model: final val loss, gap between models vs seed spread
    plot_speed(data, png) / plot_loss(data, png)
(extrapolation and zero-shot tables: tnl.eval.figures_eval)

The markdown depends only on the result files (no dates, no machine facts of the redraw), so redrawing committed
results reproduces the committed markdown byte for byte (tests/test_reproduce.py checks it).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tnl.eval.compare import _median_after_first, ema, fmt_tokens
from tnl.eval.lm import EvalError
from tnl.eval.repro_results import LABELS, find, read_json, sibling

COLOURS = {"tnl": "#1f77b4", "llama": "#ff7f0e"}


def _k(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _rel(path: Path) -> str:
    return path.name


# ------------------------------------------------------------------------------------------------------ speed
def speed_table(paths: list[Path]) -> tuple[str, dict]:
    """Rows of bench_train JSONs by model (a model in several files: the last file given wins)."""
    if not paths:
        raise EvalError("speed: no bench_train result files given")
    by_model: dict[str, dict] = {}
    metas = []
    for p in paths:
        doc = read_json(p)
        if "results" not in doc or "meta" not in doc:
            raise EvalError(f"{p} is not a benchmarks/bench_train.py result (no 'meta' / 'results')")
        metas.append((p, doc["meta"]))
        for row in doc["results"]:
            by_model.setdefault(row["model"], {})[int(row["seq_len"])] = row
    models = sorted(by_model, key=lambda m: (not m.startswith("tnl"), m))
    lens = sorted({L for rows in by_model.values() for L in rows})
    devices = sorted({m.get("device_name", "?") for _, m in metas})
    lines = [f"# Training throughput against context ({', '.join(devices)})", "", "![speed](speed.png)", "",
             "| context | " + " | ".join(f"{m} tokens/s" for m in models) + " | " + " | ".join(
                 f"{m} / {models[-1]}" for m in models[:-1]) + " |",
             "|---|" + "---|" * (2 * len(models) - 1)]
    for L in lens:
        tps = [(by_model[m].get(L) or {}).get("tokens_per_s") if (by_model[m].get(L) or {}).get("status", "ok")
               == "ok" else None for m in models]
        cells = [f"{t:,.0f}" if t else (by_model[m].get(L) or {}).get("status", "") for m, t in zip(models, tps)]
        ratios = [f"{t / tps[-1]:.2f}x" if t and tps[-1] else "" for t in tps[:-1]]
        lines.append(f"| {_k(L)} | " + " | ".join(cells + ratios) + " |")
    lines.append("")
    for p, m in metas:
        lines.append(f"- `{_rel(p)}`: {m.get('device_name')}, {m.get('tokens_per_step')} tokens per step, "
                     f"{m.get('precision')}, {m.get('optimizer')}, compile {m.get('compile')}, torch {m.get('torch')}"
                     f", triton {m.get('triton')}, {m.get('time')}; `{m.get('command')}`")
    if len(devices) > 1:
        lines.append("- WARNING: the sources come from different GPUs; the columns are not comparable.")
    data = {"models": models, "rows": {m: {L: r for L, r in by_model[m].items()} for m in models},
            "devices": devices}
    return "\n".join(lines) + "\n", data


def plot_speed(data: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for m in data["models"]:
        rows = sorted(data["rows"][m].items())
        xs = [L for L, r in rows if r.get("status", "ok") == "ok"]
        ys = [r["tokens_per_s"] / 1e3 for L, r in rows if r.get("status", "ok") == "ok"]
        ax.plot(xs, ys, marker="o", color=COLOURS.get(m.split("_")[0]), label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({L for rows in data["rows"].values() for L in rows}))
    ax.set_xticklabels([_k(L) for L in ax.get_xticks().astype(int)])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("training tokens/s (thousands)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"training throughput vs context ({', '.join(data['devices'])})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------ loss
def loss_table(results_dir: Path, experiment: str = "repro_small") -> tuple[str, dict]:
    """Final val loss per (model, seed), the gap between the models' means against the spread between seeds."""
    metrics = find(results_dir, "metrics.jsonl", experiment)
    if not metrics:
        raise EvalError(f"loss: no {experiment}_<model>_seed<seed>_*.metrics.jsonl in {results_dir}")
    runs: dict[str, dict[int, dict]] = {}
    for (model, seed), f in sorted(metrics.items()):
        recs = _records(f.path)
        val = [(r["tokens"], r["val_loss"]) for r in recs if isinstance(r.get("val_loss"), (int, float))]
        if not val:
            raise EvalError(f"{f.path} has no val_loss records")
        meta = read_json(sibling(f, "run.json")) if sibling(f, "run.json") else {}
        runs.setdefault(model, {})[seed] = {"file": f.path.name, "gpu": f.gpu, "val": val, "final": val[-1][1],
                                            "tokens": max(r["tokens"] for r in recs),
                                            "train": [(r["tokens"], r["loss"]) for r in recs if "loss" in r],
                                            "meta": meta, "records": recs}
    models = [m for m in ("tnl", "llama") if m in runs]
    seeds = sorted({s for m in models for s in runs[m]})
    stats = {}
    for m in models:
        finals = [runs[m][s]["final"] for s in sorted(runs[m])]
        stats[m] = {"mean": statistics.fmean(finals), "spread": max(finals) - min(finals), "n": len(finals),
                    "min": min(finals), "max": max(finals)}
    lines = [f"# Validation loss, TNL vs LLaMA, {len(seeds)} seed(s) each ({experiment})", "", "![loss](loss.png)", "",
             "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | seed spread (max - min) |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for m in models:
        cells = [f"{runs[m][s]['final']:.4f}" if s in runs[m] else "" for s in seeds]
        spread_cell = f"{stats[m]['spread']:.4f}" if stats[m]["n"] > 1 else ""
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {stats[m]['mean']:.4f} | {spread_cell} |")
    summary = {}
    if len(models) == 2:
        t, a = stats["tnl"], stats["llama"]
        gap = a["mean"] - t["mean"]
        spread = max(t["spread"], a["spread"])
        closest = a["min"] - t["max"]
        summary = {"gap": gap, "max_spread": spread, "closest_pair_gap": closest,
                   "gap_over_spread": gap / spread if spread > 0 else None}
        if min(t["n"], a["n"]) > 1 and spread > 0:
            lines += ["", f"- gap of the means (LLaMA - TNL): **{gap:.4f}** nats; the larger seed spread: "
                          f"**{spread:.4f}**, {gap / spread:.1f}x smaller than the gap; the closest pair (best LLaMA "
                          f"seed - worst TNL seed): {closest:.4f}."]
        else:
            lines += ["", f"- gap (LLaMA - TNL): **{gap:.4f}** nats; one seed per model, so no seed spread yet."]
    lines += ["", "Validation loss at each evaluation (the same first validation windows in every run):", "",
              "| tokens | " + " | ".join(f"{LABELS[m]} s{s}" for m in models for s in sorted(runs[m])) +
              (" | gap (means) | TNL spread | LLaMA spread |" if len(models) == 2 else " |"),
              "|---|" + "---|" * (sum(len(runs[m]) for m in models) + (3 if len(models) == 2 else 0))]
    marks = sorted({t for m in models for s in runs[m] for t, _ in runs[m][s]["val"]})
    curve = []
    for tok in marks:
        vals = {(m, s): dict(runs[m][s]["val"]).get(tok) for m in models for s in runs[m]}
        cells = [_f4(vals[(m, s)]) for m in models for s in sorted(runs[m])]
        row = {"tokens": tok}
        if len(models) == 2:
            per = {m: [v for (mm, _), v in vals.items() if mm == m and v is not None] for m in models}
            if all(per[m] for m in models):
                row["gap"] = statistics.fmean(per["llama"]) - statistics.fmean(per["tnl"])
                for m in models:
                    if len(per[m]) > 1:
                        row[f"{m}_spread"] = max(per[m]) - min(per[m])
            cells += [_f4(row.get("gap")), _f4(row.get("tnl_spread")), _f4(row.get("llama_spread"))]
        curve.append(row)
        lines.append(f"| {fmt_tokens(tok)} | " + " | ".join(cells) + " |")
    lines += ["", "Final val loss: the run's last logged validation loss (trainer.eval_batches micro batches of the "
                  "validation split, in order: the same tokens in every run). Runs of different code revisions (see "
                  "each run's note) differ in numerics as well as in seed, so their spread bounds the seed noise "
                  "from above.", ""]
    for m in models:
        for s in sorted(runs[m]):
            r = runs[m][s]
            meta = r["meta"]
            tps = _median_after_first([x.get("tokens_per_s") for x in r["records"]])
            lines.append(f"- `{r['file']}`: {meta.get('gpu', r['gpu'])}, {fmt_tokens(r['tokens'])} tokens"
                         + (f", {tps:,.0f} tokens/s" if tps else "")
                         + (f", torch {meta['versions'].get('torch')}" if meta.get("versions") else "")
                         + (f"; `{meta['command']}`" if meta.get("command") else "")
                         + (f" ({meta['note']})" if meta.get("note") else ""))
    return "\n".join(lines) + "\n", {"runs": runs, "stats": stats, "summary": summary, "curve": curve}


def _f4(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("tokens"), (int, float)):
            out.append(rec)
    return out


def plot_loss(data: dict, path: Path, smoothing: float = 0.9) -> Path:
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    styles = ["-", "--", ":", "-."]
    for m, seeds in data["runs"].items():
        for i, (s, r) in enumerate(sorted(seeds.items())):
            tx, ty = zip(*r["train"])
            ax.plot(tx, ema(list(ty), smoothing), color=COLOURS[m], ls=styles[i % 4], lw=0.8, alpha=0.5)
            vx, vy = zip(*r["val"])
            ax.plot(vx, vy, color=COLOURS[m], ls=styles[i % 4], marker="o", ms=3, label=f"{LABELS[m]} seed {s} val")
    ax.set_xscale("log")
    ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("train (EMA, thin) and validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    pts = [c for c in data["curve"] if "gap" in c]
    if pts:
        xs = [c["tokens"] for c in pts]
        bx.plot(xs, [c["gap"] for c in pts], color="k", marker="o", label="gap of the means (LLaMA - TNL)")
        for m in ("tnl", "llama"):
            sp = [(c["tokens"], c[f"{m}_spread"]) for c in pts if f"{m}_spread" in c]
            if sp:
                bx.plot(*zip(*sp), color=COLOURS[m], marker="s", ls="--", label=f"{LABELS[m]} seed spread")
        bx.set_xscale("log")
        bx.set_ylim(bottom=0)
    bx.set_xlabel("tokens")
    bx.set_ylabel("validation loss difference (nats)")
    bx.set_title("gap between models vs spread between seeds")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=8)
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvalError("matplotlib is not installed: the PNG cannot be drawn (the markdown is written)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
