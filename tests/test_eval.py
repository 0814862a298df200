"""tnl.eval: held-out loss through the DeepSpeed checkpoint and through the HF export (the same number, and the
number a float64 reference gives), text files, zero-shot task metrics from the model's own log-likelihoods, and
one-line CLI errors. One tiny run (tnl_tiny, 2 steps on a generated corpus) is trained once for the module."""

import json
import lzma
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from procs import repo_env

from tnl.eval import cli
from tnl.eval.harness import encode_pair, evaluate_task, loglikelihoods
from tnl.eval.heldout import heldout_loss, text_batches, val_batches
from tnl.eval.lm import EvalError, load_run
from tnl.eval.tasks import TASKS, load_docs

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the river ran past a mill where old men told stories of kings and bread and ships, and every child "
         "listened to the wind over water while the bells rang at noon").split()


def make_text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words)).capitalize() + "."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 2-step tnl_tiny run (ZeRO-0, CPU) on a generated corpus: checkpoints/, hf/, metrics.jsonl."""
    root = tmp_path_factory.mktemp("evalrun")
    rng = np.random.default_rng(0)
    with open(root / "corpus.jsonl", "w") as f:
        for _ in range(120):
            f.write(json.dumps({"text": "\n".join(make_text(rng, 30) for _ in range(3))}) + "\n")
    run = root / "run"
    env = repo_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "model=tnl_tiny", "data=demo",
           f"data.inputs=[{root / 'corpus.jsonl'}]", f"data.dir={root / 'data'}", "data.vocab_size=300",
           "data.val_fraction=0.2", "deepspeed=zero0", "trainer.max_steps=2", "trainer.micro_batch_size=2",
           "trainer.seq_len=32", "trainer.eval_every=0", "trainer.save_every=0", "trainer.progress=log",
           f"run_dir={run}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "hf" / "config.json").is_file() and (run / "checkpoints" / "latest").is_file()
    return run


@pytest.fixture(scope="module")
def hf_lm(run_dir):
    """The run's hf/ export, loaded once for the tests that only read it."""
    return load_run(run_dir, source="hf", device="cpu")


def reference_loss(model, batches) -> float:
    """Float64 log-softmax of the training model's full logits, averaged over every target."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids"]).logits.double()
            logp = torch.log_softmax(logits, -1).gather(-1, b["targets"][..., None])[..., 0]
            nll, count = nll - float(logp.sum()), count + b["targets"].numel()
    return nll / count


def test_checkpoint_and_hf_give_the_reference_loss(run_dir):
    ckpt = load_run(run_dir, source="checkpoint", device="cpu")
    hf = load_run(run_dir, source="hf", device="cpu")
    assert ckpt.kind == "checkpoint" and hf.kind == "hf" and ckpt.info["step"] == 2
    data_dir = Path(ckpt.info["data_dir"])
    batches, total = val_batches(data_dir, 32, 4)
    assert total == len(list(batches)) >= 2
    a = heldout_loss(ckpt, batches, total, max_batches=2, progress=False)
    b = heldout_loss(hf, batches, total, max_batches=2, progress=False)
    ref = reference_loss(ckpt.model, list(batches)[:2])
    assert a["tokens"] == b["tokens"] == 2 * 4 * 32 and a["batches"] == 2
    # fp32 models: the chunked training loss, HF logits + cross-entropy and the float64 reference agree
    assert a["loss"] == pytest.approx(ref, rel=1e-5) and b["loss"] == pytest.approx(ref, rel=1e-5)
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]), rel=1e-12)
    assert 7.8 < ref < 8.6  # the model has 4096 logits, 2 steps from random: near ln(4096) = 8.32


def test_cli_json_to_stdout_and_file(run_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = cli.main(["--run", str(run_dir), "--source", "hf", "--max-batches", "1", "--batch-size", "2",
                   "--no-progress", "--out", str(out), "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and json.loads(out.read_text()) == printed
    assert printed["model"]["source"] == "hf" and printed["heldout"]["tokens"] == 2 * 32
    assert printed["heldout"]["seq_len"] == 32  # the run's trainer.seq_len


def test_cli_context_sweep(run_dir, tmp_path, capsys):
    """--contexts: the loss at several contexts over the same tokens of the run's validation split; the training
    context's entry equals the plain held-out loss over the same windows."""
    out = tmp_path / "sweep.json"
    rc = cli.main(["--run", str(run_dir), "--contexts", "16,32,64", "--max-tokens", "256", "--no-progress",
                   "--out", str(out), "--device", "cpu"])
    report = json.loads(out.read_text())
    assert rc == 0 and json.loads(capsys.readouterr().out) == report
    sweep = report["contexts"]
    assert sweep["windows"] == "disjoint" and sweep["tokens"] == 256 and sweep["train_seq_len"] == 32
    assert [r["context"] for r in sweep["results"]] == [16, 32, 64] and "heldout" not in report
    assert all(r["tokens"] == 256 and r["windows"] == 256 // r["context"] for r in sweep["results"])
    lm = load_run(run_dir, device="cpu")
    from tnl.eval.extrapolation import val_stream

    stream = val_stream(lm.info["data_dir"])
    data = torch.from_numpy(stream[:257])
    batches = [{"input_ids": data[:-1].view(8, 32), "targets": data[1:].view(8, 32)}]
    assert heldout_loss(lm, batches, progress=False)["loss"] == pytest.approx(sweep["results"][1]["loss"], rel=1e-5)
    assert cli.main(["--run", str(run_dir), "--contexts", "16", "--seq-len", "16", "--no-progress",
                     "--out", str(tmp_path / "x.json")]) == 1
    assert "either --seq-len" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_text_files_score_every_token_once(hf_lm, tmp_path):
    lm = hf_lm
    rng = np.random.default_rng(1)
    docs = [make_text(rng, 40), make_text(rng, 7)]
    paths = [tmp_path / "a.txt", tmp_path / "b.jsonl.xz"]
    paths[0].write_text(docs[0])
    with lzma.open(paths[1], "wt") as f:
        f.write(json.dumps({"text": docs[1]}) + "\n")
    stream = lm.tokenizer.encode(docs[0]) + [lm.eos_id] + lm.tokenizer.encode(docs[1]) + [lm.eos_id]
    batches, total = text_batches(paths, lm.tokenizer, lm.eos_id, seq_len=13, batch_size=3)
    result = heldout_loss(lm, batches, total, progress=False)
    assert result["tokens"] == len(stream) - 1
    # reference: one forward per window of 14 tokens sharing one token, float64 log-softmax
    nll = 0.0
    with torch.no_grad():
        for lo in range(0, len(stream) - 1, 13):
            w = torch.tensor(stream[lo:lo + 14])
            logp = torch.log_softmax(lm.model(input_ids=w[None, :-1]).logits[0].double(), -1)
            nll -= float(logp.gather(-1, w[1:, None]).sum())
    assert result["loss"] == pytest.approx(nll / (len(stream) - 1), rel=1e-6)


def synthetic_task_files(root: Path, rng: np.random.Generator) -> None:
    """A few rows of each task's schema with generated text (the real eval data is not committed)."""
    def rows(n, make):
        return "".join(json.dumps(make(i)) + "\n" for i in range(n))
    mc = lambda i: {"query": f"Question: {make_text(rng, 6)}\n", "choices": [make_text(rng, int(rng.integers(1, 6)))
                                                                        for _ in range(3)], "gold": i % 3}
    (root / "piqa.jsonl").write_text(rows(8, mc))
    (root / "lambada_openai.jsonl").write_text(rows(6, lambda i: {"context": make_text(rng, 12)[:-1],
                                                                  "continuation": str(rng.choice(WORDS))}))
    (root / "winogrande.jsonl").write_text(rows(6, lambda i: {
        "context_options": [make_text(rng, 5)[:-1], make_text(rng, 5)[:-1]], "continuation": make_text(rng, 4),
        "gold": i % 2}))
    import bz2
    blocks = [f"{make_text(rng, 8)[:-1]}\n{i % 4}\n" + "\n".join(make_text(rng, 3 + j) for j in range(4))
              for i in range(5)]
    with bz2.open(root / "hellaswag_val_full.txt.bz2", "wt") as f:
        f.write("\n".join(blocks) + "\n")


def hand_loglik(lm, context: str, continuation: str) -> tuple[float, bool]:
    """One unbatched forward of [EOS] + context + continuation; float64 log-softmax over the continuation."""
    ctx = [lm.eos_id] + lm.tokenizer.encode(context)
    whole = [lm.eos_id] + lm.tokenizer.encode(context + continuation)
    assert whole[:len(ctx)] == ctx  # these texts tokenize cleanly at the boundary
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), -1)
    target = torch.tensor(whole[len(ctx):])
    part = logp[len(ctx) - 1:]
    return float(part.gather(-1, target[:, None]).sum()), bool((part.argmax(-1) == target).all())


@pytest.mark.parametrize("name", ["piqa", "lambada_openai", "winogrande", "hellaswag"])
def test_task_metrics_from_the_models_own_logliks(hf_lm, tmp_path, name):
    lm = hf_lm
    synthetic_task_files(tmp_path, np.random.default_rng(2))
    docs = load_docs(name, tmp_path)
    hand = [[hand_loglik(lm, c, x) for c, x in d.pairs] for d in docs]
    got = loglikelihoods(lm, [p for d in docs for p in d.pairs], batch_size=3, progress=False)
    assert np.allclose([s[0] for s in got], [s[0] for h in hand for s in h], rtol=1e-6, atol=1e-6)
    result = evaluate_task(lm, name, tmp_path, batch_size=3, progress=False)
    assert result["n"] == len(docs)
    if name == "lambada_openai":
        assert result["acc"] == sum(h[0][1] for h in hand) / len(docs)
        assert result["perplexity"] == pytest.approx(math.exp(-np.mean([h[0][0] for h in hand])), rel=1e-6)
        return
    acc = np.mean([int(np.argmax([s[0] for s in h]) == d.gold) for h, d in zip(hand, docs)])
    assert result["acc"] == acc
    if "acc_norm" in TASKS[name].metrics:
        choices = [[x.strip() for _, x in d.pairs] for d in docs]
        norm = np.mean([int(np.argmax([s[0] / len(c) for s, c in zip(h, cs)]) == d.gold)
                        for h, cs, d in zip(hand, choices, docs)])
        assert result["acc_norm"] == norm


def test_real_task_files_parse():
    """Each local eval file (when ../shared/evals or $TNL_EVAL_ROOT is present) parses into well-formed docs."""
    from tnl.eval.tasks import DEFAULT_TASKS, default_root

    root = default_root() if default_root().is_dir() else REPO.parent / "shared" / "evals"
    if not root.is_dir():
        pytest.skip("no local eval files")
    for name in DEFAULT_TASKS:
        docs = load_docs(name, root, limit=3)
        assert len(docs) == 3 and all(0 <= d.gold < len(d.pairs) for d in docs)
        assert all(x.startswith(" ") and len(c) > 0 for d in docs for c, x in d.pairs)


def test_paper_average():
    from tnl.eval.tasks import paper_average

    res = {"piqa": {"acc": 0.6, "acc_norm": 0.1}, "hellaswag": {"acc": 0.0, "acc_norm": 0.3}, "lambada_openai": {
        "acc": 0.9}, "data_dir": "x"}
    assert paper_average(res) == {"value": pytest.approx(0.45), "tasks": {"piqa": "acc", "hellaswag": "acc_norm"}}
    assert paper_average({"lambada_openai": {"acc": 1.0}}) is None


def test_encode_pair_truncates_from_the_left(hf_lm):
    lm = hf_lm
    context = " ".join(["the river ran past a mill"] * 20)
    ids, n = encode_pair(lm, context + " ", "bread", max_len=16)  # the trailing space moves to the continuation
    whole = lm.tokenizer.encode(context + " bread")
    assert ids == whole[-17:] and n == len(whole) - len(lm.tokenizer.encode(context)) > 0


@pytest.mark.parametrize("argv, message", [
    (["--run", "{tmp}/nope"], "does not exist"),
    (["--hf", "{tmp}"], "no config.json"),
    (["--run", "{run}", "--tasks", "piqa,nope"], "unknown task"),
    (["--run", "{run}", "--text", "{tmp}/missing.txt"], "does not exist"),
    (["--run", "{run}", "--tasks", "piqa", "--data-dir", "{tmp}"], "no file"),
    (["--run", "{run}", "model=tnl_tiny"], "only data=NAME"),
    (["--run", "{run}", "data=demo", "data.dir={tmp}/none"], "not prepared"),
    (["--run", "{run}", "--tasks", "piqa", "--backend", "lm-eval"], "HF directory"),
])
def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "r.json"
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv] + ["--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_corrupt_checkpoint_is_one_line(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("hf"))
    tag = (run / "checkpoints" / "latest").read_text().strip()
    for f in (run / "checkpoints" / tag).glob("*model_states.pt"):
        f.write_bytes(f.read_bytes()[:1000])  # truncated, as a full disk would leave it
    assert cli.main(["--run", str(run), "--no-progress", "--out", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read checkpoint") and "Traceback" not in err[0]
    assert not (tmp_path / "r.json").exists()


def test_load_run_without_checkpoint(tmp_path):
    with pytest.raises(EvalError, match="no complete checkpoint"):
        load_run(tmp_path, device="cpu")


@pytest.mark.gpu
def test_cuda_bf16_loss_close_to_cpu_fp32(run_dir):
    cpu = load_run(run_dir, source="checkpoint", device="cpu")
    batches, total = val_batches(Path(cpu.info["data_dir"]), 32, 4)
    ref = heldout_loss(cpu, batches, total, max_batches=2, progress=False)["loss"]
    for source in ("checkpoint", "hf"):
        gpu = load_run(run_dir, source=source, device="cuda", dtype="bf16")
        assert heldout_loss(gpu, batches, total, max_batches=2, progress=False)["loss"] == pytest.approx(ref, rel=1e-2)
