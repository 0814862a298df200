"""lm-evaluation-harness on the local task files, fully offline (the project's `eval` extra: pip install lm-eval).

    results = run_lm_eval(hf_dir, ["piqa", "hellaswag"], root="../shared/evals", limit=100)
    # {"piqa": {"acc": .., "acc_norm": .., "n": ..}, ...}

Each task is handed to lm-eval as an in-memory task config: the documents come from tnl.eval.tasks (the same local
files and prompts as tnl's own scorer) through lm-eval's `custom_dataset` hook, so nothing is downloaded and no
dataset script runs. lm-eval then tokenizes, batches and scores with its `hf` model (AutoModelForCausalLM,
trust_remote_code) and computes acc / acc_norm / perplexity itself: an independent implementation of the same numbers
as tnl.eval.harness with prefix_eos=False (tests/test_eval_lm_eval.py compares them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tnl.eval.lm import EvalError
from tnl.eval.tasks import TASKS, Doc, load_docs

log = logging.getLogger("tnl.eval")


def _rows(docs: list[Doc], multiple_input: bool) -> list[dict]:
    rows = []
    for d in docs:
        if multiple_input:  # winogrande: the contexts differ, the continuation is shared
            rows.append({"contexts": [c for c, _ in d.pairs], "target": d.pairs[0][1][1:], "gold": d.gold})
        else:
            rows.append({"ctx": d.pairs[0][0], "choices": [x[1:] for _, x in d.pairs], "gold": d.gold})
    return rows


def task_config(name: str, docs: list[Doc]) -> dict:
    """An lm-eval task config (dict form) for `docs` of tnl task `name`; continuations are " " + choice."""
    import datasets

    if not all(x.startswith(" ") for d in docs for _, x in d.pairs):
        raise EvalError(f"task {name}: every continuation must start with a space (lm-eval's target_delimiter)")
    task = TASKS[name]
    multiple_input = name == "winogrande"
    rows = _rows(docs, multiple_input)

    def dataset(**_):
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    cfg = {"task": f"tnl_{name}", "custom_dataset": dataset, "test_split": "test", "target_delimiter": " ",
           "num_fewshot": 0, "metadata": {"version": 1.0}}
    if "perplexity" in task.metrics:  # LAMBADA: log-likelihood of " " + the last word (no delimiter added here)
        cfg.update(output_type="loglikelihood", doc_to_text=lambda d: d["ctx"],
                   doc_to_target=lambda d: " " + d["choices"][0],
                   metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
        return cfg
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in task.metrics]
    cfg.update(output_type="multiple_choice", metric_list=metrics)
    if multiple_input:  # lm-eval's partial scoring: doc_to_text gives the gold index, the choices are contexts
        cfg.update(doc_to_text=lambda d: d["gold"], doc_to_choice=lambda d: d["contexts"],
                   doc_to_target=lambda d: d["target"])
    else:
        cfg.update(doc_to_text=lambda d: d["ctx"], doc_to_choice=lambda d: d["choices"],
                   doc_to_target=lambda d: d["gold"])
    return cfg


def run_lm_eval(hf_dir: str | Path, tasks: list[str], root=None, limit: int = 0, batch_size: int = 16,
                device: str | None = None, dtype: str = "float32", max_length: int = 2048,
                samples: bool = False) -> dict:
    """Evaluate an HF directory with lm-eval on tnl's local tasks; returns {task: {metric: value, "n": docs}}.

    samples=True adds "logliks": per document, lm-eval's log-likelihood of each request (choice), in file order."""
    try:
        import lm_eval
    except ImportError:
        raise EvalError("lm-eval is not installed: pip install 'tnl[eval]' (or pip install lm-eval)") from None
    # tnl's tasks are local files: keep lm-eval and datasets from asking the Hub (a user's own setting wins)
    offline = {k: "1" for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if k not in os.environ}
    if offline:
        os.environ.update(offline)
        log.info("lm-eval on local task files: set %s", " ".join(f"{k}=1" for k in offline))
    configs = {name: task_config(name, load_docs(name, root, limit)) for name in tasks}
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_args = {"pretrained": str(hf_dir), "trust_remote_code": True, "dtype": dtype, "max_length": max_length}
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(configs.values()),
                                  batch_size=batch_size, device=device, log_samples=samples, bootstrap_iters=0,
                                  cache_requests=False)
    if out is None:
        raise EvalError("lm-eval returned no results")
    results = {}
    for name in tasks:
        got = out["results"].get(f"tnl_{name}", {})
        metrics = {m: got.get(f"{m},none") for m in TASKS[name].metrics}
        if any(v is None for v in metrics.values()):
            raise EvalError(f"lm-eval gave no {TASKS[name].metrics} for task {name}: {sorted(got)}")
        results[name] = {**metrics, "n": int(out.get("n-samples", {}).get(f"tnl_{name}", {}).get("effective", 0))}
        if samples:
            docs = sorted(out["samples"][f"tnl_{name}"], key=lambda s: s["doc_id"])
            results[name]["logliks"] = [[float(r[0][0]) for r in s["resps"]] for s in docs]
    return results
