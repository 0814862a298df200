"""Tables and plots of the reproduction's checkpoint evaluations (scripts/eval.py reports): length extrapolation and
zero-shot tasks. Like tnl.eval.figures, the markdown depends only on the result files.

    md, data = extrapolation_table(results_dir); plot_extrapolation(data, png)
    md, data = tasks_table(results_dir)
"""

from __future__ import annotations

import math
from pathlib import Path

from tnl.eval.figures import COLOURS, _k, _pyplot, _save
from tnl.eval.lm import EvalError
from tnl.eval.repro_results import LABELS, find, read_json

# 1 / number of choices of every document (the local task files: PIQA, WinoGrande, BoolQ, COPA 2; ARC, OpenBookQA,
# HellaSwag 4). BoolQ's answers are unbalanced: always " yes" scores 0.63 and always " no" 0.37 on its first 500.
CHANCE = {"piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25, "winogrande": 0.5, "boolq": 0.5, "openbookqa": 0.25,
          "hellaswag": 0.25, "copa": 0.5}
# The metric the paper's table (and tnl.eval.tasks.paper_average) reports per task; chance is judged on it.
PAPER_METRIC = {"piqa": "acc", "arc_easy": "acc", "arc_challenge": "acc_norm", "winogrande": "acc", "boolq": "acc",
                "openbookqa": "acc_norm", "hellaswag": "acc_norm", "copa": "acc"}
TASK_ORDER = ["lambada_openai", "piqa", "arc_easy", "arc_challenge", "winogrande", "boolq", "openbookqa", "hellaswag",
              "copa"]


def _reports(results_dir: Path, section: str, experiment: str) -> dict[tuple[str, int], tuple[str, dict]]:
    """{(model, seed): (file name, report)} of the newest eval.json (or tasks.json) holding `section`."""
    out = {}
    for kind in ("tasks.json", "eval.json") if section == "tasks" else ("eval.json",):
        for key, f in find(results_dir, kind, experiment).items():
            doc = read_json(f.path)
            if section in doc and (key not in out or f.stamp >= out[key][2]):
                out[key] = (f.path.name, doc, f.stamp)
    return {k: (name, doc) for k, (name, doc, _) in sorted(out.items(), key=lambda kv: _order(kv[0]))}


def _order(key: tuple[str, int]) -> tuple[int, int]:
    return (0 if key[0] == "tnl" else 1, key[1])


# ------------------------------------------------------------------------------------------- extrapolation
def extrapolation_table(results_dir: Path, experiment: str = "repro_small") -> tuple[str, dict]:
    reports = _reports(results_dir, "contexts", experiment)
    if not reports:
        raise EvalError(f"extrapolation: no {experiment}_<model>_seed<seed>_*.eval.json with a 'contexts' section in "
                        f"{results_dir} (scripts/eval.py --contexts)")
    series = {}
    for (model, seed), (name, doc) in reports.items():
        c = doc["contexts"]
        series[(model, seed)] = {"file": name, "tokens": c["tokens"], "windows": c["windows"],
                                 "train_len": c.get("train_seq_len"), "edges": c["position_edges"],
                                 "results": {r["context"]: r for r in c["results"]},
                                 "device": doc.get("device"), "dtype": doc.get("dtype")}
    keys = list(series)
    contexts = sorted({L for s in series.values() for L in s["results"]})
    train_lens = sorted({s["train_len"] for s in series.values() if s["train_len"]})
    tokens = sorted({s["tokens"] for s in series.values()})
    head = [f"{LABELS[m]} s{s}" for m, s in keys]
    lines = ["# Length extrapolation: held-out perplexity against evaluation context", "",
             "![extrapolation](extrapolation.png)", "",
             f"Both models trained at context {', '.join(map(str, train_lens)) or '?'}. Held-out validation split, "
             f"{'/'.join(f'{t:,}' for t in tokens)} tokens scored at every context, in disjoint windows (each token "
             "once per context, predicted from the tokens before it in its window).", "",
             "| context | " + " | ".join(f"{h} loss | {h} ppl" for h in head) + " |",
             "|---|" + "---|" * (2 * len(keys))]
    for L in contexts:
        cells = []
        for k in keys:
            r = series[k]["results"].get(L)
            cells += [f"{r['loss']:.4f}", f"{r['perplexity']:.2f}"] if r else ["", ""]
        lines.append(f"| {_k(L)} | " + " | ".join(cells) + " |")
    longest = contexts[-1]
    lines += ["", f"Loss by position of the target in its window, at context {_k(longest)} (where in a long window "
                  "a model stops using its context):", "",
              "| positions | " + " | ".join(head) + " |", "|---|" + "---|" * len(keys)]
    buckets = []
    for k in keys:
        r = series[k]["results"].get(longest)
        buckets.append({(b["from"], b["to"]): b for b in (r or {}).get("by_position", [])})
    for span in sorted({s for b in buckets for s in b}):
        cells = [f"{b[span]['loss']:.4f}" if span in b else "" for b in buckets]
        lines.append(f"| {_k(span[0])}-{_k(span[1])} | " + " | ".join(cells) + " |")
    lines.append("")
    for k in keys:
        s = series[k]
        lines.append(f"- `{s['file']}`: {s['device']}, {s['dtype']}")
    return "\n".join(lines) + "\n", {"series": series, "contexts": contexts, "train_lens": train_lens}


def plot_extrapolation(data: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    styles = ["-", "--", ":"]
    seen: dict[str, int] = {}
    longest = data["contexts"][-1]
    for (m, s), ser in data["series"].items():
        ls = styles[seen.get(m, 0) % 3]
        seen[m] = seen.get(m, 0) + 1
        xs = sorted(ser["results"])
        ax.plot(xs, [ser["results"][L]["perplexity"] for L in xs], marker="o", color=COLOURS[m], ls=ls,
                label=f"{LABELS[m]} seed {s}")
        r = ser["results"].get(longest)
        if r:
            mids = [math.sqrt(max(b["from"], 1) * b["to"]) for b in r["by_position"]]
            bx.plot(mids, [b["loss"] for b in r["by_position"]], marker="s", color=COLOURS[m], ls=ls,
                    label=f"{LABELS[m]} seed {s}")
    for axis in (ax, bx):
        for L in data["train_lens"]:
            axis.axvline(L, color="grey", ls=":", lw=1)
        axis.set_xscale("log", base=2)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    ax.set_xticks(data["contexts"])
    ax.set_xticklabels([_k(L) for L in data["contexts"]])
    ax.set_yscale("log")
    ax.set_xlabel("evaluation context (tokens; dotted: training context)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("perplexity vs evaluation context (disjoint windows)")
    edges = data["series"][next(iter(data["series"]))]["edges"][1:]
    bx.set_xticks(edges)
    bx.set_xticklabels([_k(e) for e in edges])
    bx.set_xlabel(f"position in a {_k(longest)} window (bucket ends)")
    bx.set_ylabel("validation loss (nats)")
    bx.set_title(f"loss by position at context {_k(longest)}")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ zero-shot
def near_chance(acc: float, task: str, n: int) -> bool:
    """Within two binomial standard errors of chance (1 / choices) at n documents."""
    p = CHANCE[task]
    return abs(acc - p) <= 2 * math.sqrt(p * (1 - p) / max(n, 1))


def tasks_table(results_dir: Path, experiment: str = "repro_small") -> tuple[str, dict]:
    reports = _reports(results_dir, "tasks", experiment)
    if not reports:
        raise EvalError(f"tasks: no {experiment}_<model>_seed<seed>_*.eval.json / .tasks.json with a 'tasks' "
                        f"section in {results_dir} (scripts/eval.py --tasks)")
    keys = list(reports)
    tasks = {k: doc["tasks"] for k, (_, doc) in reports.items()}
    names = [t for t in TASK_ORDER if any(t in tasks[k] for k in keys)]
    head = [f"{LABELS[m]} s{s}" for m, s in keys]
    lines = ["# Zero-shot tasks (tnl's scorer)", "",
             "acc / acc_norm (acc_norm: log-likelihood per character of the choice); the paper's metric of each task "
             "(acc_norm for ARC-Challenge, OpenBookQA, HellaSwag, else acc) is in bold, with `~` when it lies within "
             "two binomial standard errors of chance. LAMBADA: last-word accuracy and perplexity (exp of the mean "
             "negative log-likelihood of the last word, which spans several tokens).", "",
             "| task | chance | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(keys)]
    near: dict[str, list[str]] = {}
    for t in names:
        cells = []
        for k in keys:
            r = tasks[k].get(t)
            if not r:
                cells.append("")
            elif t == "lambada_openai":
                cells.append(f"acc {r['acc']:.3f}, ppl {r['perplexity']:.3g}")
            else:
                metric = PAPER_METRIC[t] if PAPER_METRIC[t] in r else "acc"
                close = near_chance(r[metric], t, r["n"])
                if close:
                    near.setdefault(t, []).append(f"{LABELS[k[0]]} s{k[1]}")
                parts = [f"{r[x]:.3f}" if x != metric else f"{'~' if close else ''}**{r[x]:.3f}**"
                         for x in ("acc", "acc_norm") if x in r]
                cells.append(" / ".join(parts))
        chance = "" if t == "lambada_openai" else f"{CHANCE[t]:.2f}"
        lines.append(f"| {t} | {chance} | " + " | ".join(cells) + " |")
    avg = [tasks[k].get("paper_average", {}).get("value") for k in keys]
    if any(a is not None for a in avg):
        lines.append("| paper average | 0.36 | " + " | ".join("" if a is None else f"{a:.3f}" for a in avg) + " |")
    lines.append("")
    all_near = [t for t in names if t != "lambada_openai" and len(near.get(t, [])) == len(keys)]
    lines.append(f"- At chance for every checkpoint: {', '.join(all_near) or 'none'}. BoolQ's answers are unbalanced "
                 "(always ' yes' scores 0.63, always ' no' 0.37 on its first 500 documents), so its accuracy shows "
                 "an answer bias, not reading. Plain acc lies below chance on ARC-Challenge and OpenBookQA where "
                 "acc_norm (divided by the choice's length) does not: unnormalised log-likelihood favours short "
                 "choices. The paper average's "
                 "chance level is 0.36 (mean of the seven chance levels).")
    for k in keys:
        name, doc = reports[k]
        tk = doc["tasks"]
        lines.append(f"- `{name}`: {tk.get('backend', 'tnl')} scorer, first {tk.get('limit') or 'all'} documents per "
                     f"task, {doc.get('device')}, {doc.get('dtype')}")
    return "\n".join(lines) + "\n", {"tasks": {f"{m}_seed{s}": tasks[(m, s)] for m, s in keys}, "near_chance": near}
