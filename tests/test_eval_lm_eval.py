"""The lm-evaluation-harness bridge, offline on local files: lm-eval's own scoring of an exported tiny TNL gives
the log-likelihoods and metrics of tnl's scorer (with lm-eval's convention: no EOS prefix). Needs the `eval` extra."""

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

from test_eval import REPO, make_text, synthetic_task_files  # noqa: E402

from tnl.eval.harness import evaluate_task, loglikelihoods  # noqa: E402
from tnl.eval.lm import load_hf  # noqa: E402
from tnl.eval.lm_eval_bridge import run_lm_eval  # noqa: E402
from tnl.eval.tasks import load_docs  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """tnl_tiny with random weights, exported with a tokenizer made by tnl.data from a small generated corpus."""
    import json

    from tnl.data import hf_tokenizer_dir, prepare
    from tnl.hf import export_pretrained
    from tnl.models import build_model


    root = tmp_path_factory.mktemp("lmeval")
    rng = np.random.default_rng(3)
    with open(root / "c.jsonl", "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": make_text(rng, 40)}) + "\n")
    data_dir = prepare({"name": "t", "inputs": [str(root / "c.jsonl")], "dir": str(root / "data"), "vocab_size": 300,
                        "val_fraction": 0.0, "num_workers": 1})
    torch.manual_seed(3)
    cfg = yaml.safe_load((REPO / "configs" / "model" / "tnl_tiny.yaml").read_text())
    return export_pretrained(build_model(cfg), root / "hf", tokenizer_dir=hf_tokenizer_dir(data_dir))


def test_lm_eval_matches_tnl_scorer(hf_dir, tmp_path):
    synthetic_task_files(tmp_path, np.random.default_rng(4))
    tasks = ["piqa", "lambada_openai", "winogrande"]
    got = run_lm_eval(hf_dir, tasks, tmp_path, limit=5, batch_size=4, device="cpu", samples=True)
    lm = load_hf(hf_dir, "cpu")
    for name in tasks:
        docs = load_docs(name, tmp_path, limit=5)
        ours = loglikelihoods(lm, [p for d in docs for p in d.pairs], batch_size=3, progress=False, prefix_eos=False)
        theirs = [ll for doc in got[name]["logliks"] for ll in doc]
        assert np.allclose(theirs, [s[0] for s in ours], rtol=1e-5, atol=1e-5), name
        mine = evaluate_task(lm, name, tmp_path, limit=5, batch_size=3, progress=False, prefix_eos=False)
        assert got[name]["n"] == mine["n"] == 5
        for metric in mine:
            if metric in ("acc", "acc_norm"):
                assert got[name][metric] == mine[metric], (name, metric)
            elif metric == "perplexity":
                assert got[name][metric] == pytest.approx(mine[metric], rel=1e-4)
