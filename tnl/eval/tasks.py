"""Zero-shot benchmark tasks read from local files (../shared/DATA.md, evals/): documents -> scoring requests.

Each document becomes one or more (context, continuation) pairs scored by their log-likelihood (tnl.eval.harness).
Prompts follow lm-evaluation-harness' default task templates, so numbers are comparable with published ones:

| task | file | prompt (context -> continuation) | metrics |
|---|---|---|---|
| lambada_openai | lambada_openai.jsonl | context -> " " + last word | acc (greedy), perplexity |
| piqa, arc_easy, arc_challenge | *.jsonl | "Question: q\\nAnswer:" -> " " + choice | acc, acc_norm |
| boolq | boolq.jsonl | "Passage: ..\\nQuestion: ..?\\nAnswer:" -> " no" / " yes" | acc |
| openbookqa | openbook_qa.jsonl | question -> " " + choice | acc, acc_norm |
| winogrande | winogrande.jsonl | sentence up to the blank with each option -> " " + rest | acc |
| hellaswag | hellaswag_val_full.txt.bz2 | "label: context" -> " " + ending | acc, acc_norm |
| copa | copa.jsonl | premise + connective -> " " + choice | acc |

acc_norm divides each choice's log-likelihood by the choice's length in characters (lm-eval's definition).
The HellaSwag file is already preprocessed (no WikiHow brackets); its context line is used as given (lm-eval also
capitalizes the second context sentence, which the file does not separate).
"""

from __future__ import annotations

import bz2
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tnl.eval.lm import EvalError

ENV_ROOT = "TNL_EVAL_ROOT"


@dataclass
class Doc:
    """One benchmark item: candidate (context, continuation) pairs, the gold index, and acc_norm lengths."""

    pairs: list[tuple[str, str]]
    gold: int
    norm_lens: list[int]


def default_root() -> Path:
    """$TNL_EVAL_ROOT, else ../shared/evals beside the current directory (DATA.md's layout)."""
    return Path(os.environ.get(ENV_ROOT) or Path("..") / "shared" / "evals")


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise EvalError(f"{path}:{i}: not valid JSON") from None
    return rows


def _choices(ctx: str, row: dict) -> Doc:
    choices = [str(c) for c in row["choices"]]
    gold = int(row["gold"])
    if not 0 <= gold < len(choices):
        raise EvalError(f"gold index {gold} out of range for {len(choices)} choices")
    return Doc([(ctx, " " + c) for c in choices], gold, [len(c) for c in choices])


def _qa(row: dict) -> Doc:  # piqa, arc_*: the query already reads "Question: ..."
    return _choices(row["query"].strip() + "\nAnswer:", row)


def _boolq(row: dict) -> Doc:
    return _choices(row["query"].rstrip() + "\nAnswer:", row)


def _plain(row: dict) -> Doc:  # openbookqa, copa: the question (or premise) is continued directly
    return _choices(row["query"].strip(), row)


def _winogrande(row: dict) -> Doc:
    cont = " " + row["continuation"].strip()
    opts = [str(o) for o in row["context_options"]]
    return Doc([(o, cont) for o in opts], int(row["gold"]), [len(cont)] * len(opts))


def _lambada(row: dict) -> Doc:
    return Doc([(row["context"].rstrip(), " " + row["continuation"].strip())], 0, [0])


def _hellaswag_clean(text: str) -> str:
    # lm-eval's preprocessing of the WikiHow-derived items: "[title]" markers, bracketed tags, double spaces
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_rows(path: Path) -> list[Doc]:
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise EvalError(f"{path}: expected blocks of 6 lines (context, label, 4 endings), got {len(lines)} lines")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, label, endings = lines[i], lines[i + 1], lines[i + 2:i + 6]
        try:
            gold = int(label)
        except ValueError:
            raise EvalError(f"{path}: line {i + 2}: label {label!r} is not an integer") from None
        ends = [_hellaswag_clean(e) for e in endings]
        docs.append(Doc([(_hellaswag_clean(ctx), " " + e) for e in ends], gold, [len(e) for e in ends]))
    return docs


@dataclass(frozen=True)
class Task:
    name: str
    file: str
    parse: Callable[[dict], Doc] | None  # None: the file has its own reader (hellaswag)
    metrics: tuple[str, ...]


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("lambada_openai", "lambada_openai.jsonl", _lambada, ("acc", "perplexity")),
    Task("piqa", "piqa.jsonl", _qa, ("acc", "acc_norm")),
    Task("arc_easy", "arc_easy.jsonl", _qa, ("acc", "acc_norm")),
    Task("arc_challenge", "arc_challenge.jsonl", _qa, ("acc", "acc_norm")),
    Task("winogrande", "winogrande.jsonl", _winogrande, ("acc",)),
    Task("boolq", "boolq.jsonl", _boolq, ("acc",)),
    Task("openbookqa", "openbook_qa.jsonl", _plain, ("acc", "acc_norm")),
    Task("hellaswag", "hellaswag_val_full.txt.bz2", None, ("acc", "acc_norm")),
    Task("copa", "copa.jsonl", _plain, ("acc",)),
)}
# The metric the TNL papers report per task (their zero-shot table), and what `paper_average` averages.
PAPER_METRIC = {"boolq": "acc", "piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc", "arc_easy": "acc",
                "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
DEFAULT_TASKS = ("lambada_openai", "piqa", "arc_easy", "arc_challenge", "winogrande", "boolq", "openbookqa",
                 "hellaswag")


def paper_average(results: dict) -> dict | None:
    """Mean of the papers' metric over the tasks of `results` ({task: metrics}) that the papers report."""
    picked = {t: results[t][m] for t, m in PAPER_METRIC.items() if isinstance(results.get(t), dict)}
    if not picked:
        return None
    return {"value": sum(picked.values()) / len(picked), "tasks": {t: PAPER_METRIC[t] for t in picked}}


def parse_task_list(spec: str | list[str]) -> list[str]:
    """'all' (the eight the TNL papers report), or a comma-separated list of names from TASKS."""
    names = spec if isinstance(spec, list) else [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return list(DEFAULT_TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise EvalError(f"unknown task(s) {unknown or names}; known: {', '.join(TASKS)} (or 'all')")
    return names


def load_docs(name: str, root: str | Path | None = None, limit: int = 0, path: str | Path | None = None) -> list[Doc]:
    """The documents of task `name` from root/<its file> (or an explicit `path`), the first `limit` when > 0."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    task = TASKS[name]
    file = Path(path) if path is not None else Path(root if root is not None else default_root()) / task.file
    if not file.is_file():
        raise EvalError(f"task {name}: no file {file} (set --data-dir or ${ENV_ROOT} to the evals folder)")
    if task.parse is None:
        docs = _hellaswag_rows(file)
    else:
        docs = []
        for i, row in enumerate(_jsonl(file), 1):
            try:
                docs.append(task.parse(row))
            except (KeyError, TypeError, ValueError) as err:
                raise EvalError(f"{file}: row {i} does not fit task {name}: {err}") from None
    if not docs:
        raise EvalError(f"task {name}: {file} holds no documents")
    return docs[:limit] if limit > 0 else docs
