"""The reproduction's result files: how they are named, found and read (benchmarks/results/reproduction/).

One training run of an experiment leaves files that share one stem, `<experiment>_<model>_seed<seed>_<gpu>_<UTC
stamp>`, e.g. repro_small_tnl_seed1235_H100_20261206T1910Z:
  <stem>.metrics.jsonl   the run's metrics.jsonl (train loss every few steps, val_loss at each evaluation)
  <stem>.run.json        GPU, versions, command, wall time, resolved config, tokenizer hash of the run
  <stem>.eval.json       scripts/eval.py's report of the final checkpoint: "contexts" (length extrapolation) and/or
                         "tasks" (zero-shot), whichever was measured
  <stem>.tasks.json      a zero-shot report kept apart (older runs)
When several runs exist for one (experiment, model, seed), the newest stamp is the one shown.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tnl.eval.lm import EvalError

MODELS = {"tnl": "tnl_385m", "llama": "llama_385m"}  # reproduction model name -> configs/model base config
LABELS = {"tnl": "TNL", "llama": "LLaMA"}
KINDS = ("metrics.jsonl", "run.json", "eval.json", "tasks.json")
_STEM = re.compile(r"^(?P<experiment>[a-z0-9_]+?)_(?P<model>tnl|llama)_seed(?P<seed>\d+)_(?P<gpu>[A-Za-z0-9]+)_"
                   r"(?P<stamp>\d{8}T\d{4}Z)\.(?P<kind>metrics\.jsonl|run\.json|eval\.json|tasks\.json)$")


@dataclass(frozen=True)
class ResultFile:
    path: Path
    experiment: str
    model: str  # "tnl" | "llama"
    seed: int
    gpu: str
    stamp: str
    kind: str  # one of KINDS

    @property
    def stem(self) -> str:
        return f"{self.experiment}_{self.model}_seed{self.seed}_{self.gpu}_{self.stamp}"


def parse_name(path: str | Path) -> ResultFile | None:
    """The fields of a result file's name, or None when the name does not follow the scheme."""
    path = Path(path)
    m = _STEM.match(path.name)
    if m is None:
        return None
    return ResultFile(path, m["experiment"], m["model"], int(m["seed"]), m["gpu"], m["stamp"], m["kind"])


def stem_for(experiment: str, model: str, seed: int, gpu: str, when: dt.datetime | None = None) -> str:
    """A new stem; `gpu` is shortened to its model name (NVIDIA H100 80GB HBM3 -> H100)."""
    if model not in MODELS:
        raise EvalError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{experiment}_{model}_seed{int(seed)}_{short_gpu(gpu)}_{when:%Y%m%dT%H%MZ}"


def short_gpu(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA H200' -> 'H200'; else the name's letters and digits."""
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name or "")
    return m.group(1) if m else (re.sub(r"[^A-Za-z0-9]", "", name or "") or "cpu")[:16]


def find(results_dir: str | Path, kind: str, experiment: str = "repro_small") -> dict[tuple[str, int], ResultFile]:
    """{(model, seed): the newest file of `kind`} in results_dir."""
    if kind not in KINDS:
        raise EvalError(f"kind must be one of {KINDS}, got {kind!r}")
    out: dict[tuple[str, int], ResultFile] = {}
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return out
    for p in sorted(results_dir.iterdir()):
        f = parse_name(p)
        if f is None or f.kind != kind or f.experiment != experiment:
            continue
        key = (f.model, f.seed)
        if key not in out or f.stamp > out[key].stamp:
            out[key] = f
    return out


def read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot read {path}: {err}") from None


def sibling(f: ResultFile, kind: str) -> Path | None:
    """The file of another kind with the same stem, when it exists."""
    p = f.path.with_name(f"{f.stem}.{kind}")
    return p if p.is_file() else None
