"""transformers' Trainer fine-tunes an exported TNL (scripts/finetune_hf.py): the labels loss falls, gradient
checkpointing is on, the output (Trainer's save_model = save_pretrained) loads where tnl is not importable and
generates; gradient_checkpointing_enable() recomputes the blocks and keeps the gradients; the loss honours
num_items_in_batch as the Trainer passes it."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from no_tnl import run_without_tnl
from procs import repo_env
from test_data_prepare import make_docs, write_jsonl

import tnl  # noqa: F401
from tnl.data import hf_tokenizer_dir, prepare
from tnl.hf import TnlConfig, TnlForCausalLM, export_pretrained
from tnl.hf.bundle import bundle_sources
from tnl.models import build_model

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("accelerate")  # the Trainer's dependency (tnl's eval extra, installed by `make test`)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A freshly initialised tiny TNL exported with a 400-token tokenizer, and text to fine-tune it on."""
    tmp = tmp_path_factory.mktemp("ft")
    docs = make_docs(300, seed=11)
    write_jsonl(tmp / "c.jsonl", docs)
    (tmp / "notes.txt").write_text("\n\n".join(docs), encoding="utf-8")
    data = prepare({"name": "c", "inputs": [str(tmp / "c.jsonl")], "dir": str(tmp / "data"), "vocab_size": 400,
                    "val_fraction": 0.0, "text_field": "body", "num_workers": 1})
    torch.manual_seed(0)
    core = build_model(dict(arch="tnl", vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=3))
    export_pretrained(core, tmp / "base", tokenizer_dir=hf_tokenizer_dir(data))
    return tmp


def test_trainer_fine_tunes_and_the_result_loads_without_tnl(base, tmp_path):
    out = tmp_path / "ft"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune_hf.py"), "--model", str(base / "base"),
                        "--data", str(base / "notes.txt"), "--out", str(out), "--steps", "10", "--seq-len", "32",
                        "--batch-size", "2", "--grad-accum", "2", "--lr", "3e-3", "--warmup", "1", "--no-progress"],
                       capture_output=True, text=True, env=repo_env(OMP_NUM_THREADS="2"), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    losses = summary["losses"]
    assert summary["steps"] == 10 and len(losses) == 10 and summary["gradient_checkpointing"] is True
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2, losses  # it learns
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_tnl.TnlForCausalLM"
    assert all((out / name).read_text(encoding="utf-8") == src for name, src in bundle_sources().items())
    assert (out / "tokenizer.json").is_file() and "fine-tuned from base" in (out / "README.md").read_text()
    tuned, start = TnlForCausalLM.from_pretrained(out).eval(), TnlForCausalLM.from_pretrained(base / "base")
    assert not torch.equal(tuned.embed_tokens.weight, start.embed_tokens.weight)
    ids = torch.randint(4, 400, (2, 12))
    with torch.no_grad():
        gen = tuned.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=3, eos_token_id=None)
        torch.save({"ids": ids, "logits": tuned(ids).logits, "gen": gen}, tmp_path / "io.pt")
    code = """
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        io = torch.load(sys.argv[2])
        with torch.no_grad():
            assert torch.equal(m(io["ids"]).logits, io["logits"])
            g = m.generate(io["ids"], max_new_tokens=6, do_sample=False, pad_token_id=3, eos_token_id=None)
            assert torch.equal(g, io["gen"]), (g, io["gen"])
            prompt = tok("Lo cafe", return_tensors="pt").input_ids
            text = tok.decode(m.generate(prompt, max_new_tokens=8, do_sample=False)[0])
        assert "tnl" not in sys.modules and isinstance(text, str) and len(text) > 0
        print("REMOTE-OK")
    """
    r = run_without_tnl(code, tmp_path, tmp_path / "modules", args=[out, tmp_path / "io.pt"])
    assert r.returncode == 0 and "REMOTE-OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_finetune_bad_model_folder_is_one_line(tmp_path, base):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune_hf.py"), "--model", str(tmp_path / "none"),
                        "--data", str(base / "notes.txt"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=repo_env(), timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "[WARNING]" not in ln]
    assert r.returncode == 2 and lines == [f"finetune_hf: error: --model {tmp_path / 'none'}: not a Hugging Face "
                                           "model folder (no config.json)"], r.stderr
    assert not (tmp_path / "o").exists()


def tiny_hf(seed: int) -> TnlForCausalLM:
    torch.manual_seed(seed)
    return TnlForCausalLM(TnlConfig(vocab_size=71, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=48))


def test_gradient_checkpointing_enable_recomputes_blocks_with_equal_gradients():
    ids = torch.randint(0, 71, (2, 19))
    grads, calls = [], []
    for checkpointed in (False, True):
        model = tiny_hf(1).train()
        if checkpointed:
            with warnings.catch_warnings():  # deprecated in favour of activation_checkpointing_enable on 5.25+
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable()
        n = []
        model.layers[1].token_mixer.register_forward_hook(lambda *a, n=n: n.append(1))
        model(ids, labels=ids).loss.backward()
        calls.append(len(n))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert calls == [1, 2]  # the block's forward runs again in backward
    assert all(torch.allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7) for k in grads[0])


def test_loss_with_num_items_in_batch_is_summed_token_loss_over_it():
    model = tiny_hf(2).eval()
    ids = torch.randint(0, 71, (3, 10))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        logits = model(ids).logits
        total = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 71), labels[:, 1:].reshape(-1),
                                                  reduction="sum")
        mean = model(ids, labels=labels).loss
        scaled = model(ids, labels=labels, num_items_in_batch=torch.tensor(50)).loss
    n = (labels[:, 1:] != -100).sum()
    assert mean.item() == pytest.approx((total / n).item(), rel=1e-5)
    assert scaled.item() == pytest.approx((total / 50).item(), rel=1e-5)
