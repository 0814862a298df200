"""End to end on CPU: `deepspeed --num_gpus 2 scripts/train.py data=hf data.hf.path=<save_to_disk folder>` trains
tnl_tiny (two gloo ranks), exports with a model card, and the export loads with trust_remote_code where tnl is not
importable; after the dataset changes, resuming that run is refused in one line before anything is rebuilt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from no_tnl import run_without_tnl
from procs import repo_env
from test_data_prepare import make_docs
from test_train_ds import FAST, check_run, launch

datasets = pytest.importorskip("datasets")
REPO = Path(__file__).resolve().parents[1]


def save_dataset(folder: Path, docs: list[str]) -> None:
    n = len(docs) * 9 // 10
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs[:n]}),
                          "validation": datasets.Dataset.from_dict({"text": docs[n:]})}).save_to_disk(str(folder))


def test_deepspeed_trains_on_a_save_to_disk_dataset_and_exports(tmp_path):
    save_dataset(tmp_path / "ds", make_docs(600, seed=21))
    run, prep = tmp_path / "run", tmp_path / "prep"
    args = ["model=tnl_tiny", "deepspeed=zero2", "data=hf", f"data.hf.path={tmp_path / 'ds'}",
            "data.hf.val_split=validation", f"data.dir={prep}", "data.vocab_size=512", "trainer.max_steps=6",
            "trainer.save_every=3", *FAST, f"run_dir={run}"]
    env = {"HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    check_run(launch(args, env=env), run, 6)
    manifest = json.loads((prep / "manifest.json").read_text())
    assert manifest["inputs"][0]["hf"]["source"] == "disk" and manifest["val_inputs"][0]["hf"]["split"] == "validation"
    card = (run / "hf" / "README.md").read_text()
    assert "ds: ds split train (a save_to_disk folder); validation: ds split validation" in card
    assert "1,536 (6 steps)" in card
    assert "held-out loss" in card

    from tnl.hf import TnlForCausalLM

    model = TnlForCausalLM.from_pretrained(run / "hf").eval()
    ids = torch.randint(4, 512, (2, 10))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "io.pt")
    code = """
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        io = torch.load(sys.argv[2])
        with torch.no_grad():
            assert torch.equal(m(io["ids"]).logits, io["logits"])
            out = m.generate(tok("The", return_tensors="pt").input_ids, max_new_tokens=5, do_sample=False)
        assert out.shape[1] > 1 and "tnl" not in sys.modules
        print("REMOTE-OK", tok.decode(out[0]))
    """
    r = run_without_tnl(code, tmp_path, tmp_path / "modules", args=[run / "hf", tmp_path / "io.pt"])
    assert r.returncode == 0 and "REMOTE-OK" in r.stdout, r.stdout + r.stderr[-3000:]

    # the dataset changes under the run: resuming it is refused before its shards are rebuilt
    save_dataset(tmp_path / "ds2", make_docs(600, seed=22))
    (tmp_path / "ds").rename(tmp_path / "ds-old")
    (tmp_path / "ds2").rename(tmp_path / "ds")
    before = (prep / "manifest.json").read_text()
    resumed = [a if not a.startswith("trainer.max_steps") else "trainer.max_steps=8" for a in args]
    r = subprocess.run([sys.executable, "scripts/train.py", *resumed], cwd=REPO, capture_output=True, text=True,
                       env=repo_env(OMP_NUM_THREADS="1", **env), timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "has checkpoints trained on the data" in lines[0] and "changed" in lines[0]
    assert (prep / "manifest.json").read_text() == before  # the shards the checkpoints fit are still there
