"""The benchmark programs in benchmarks/: each one's --help from outside the repository (its default output folder
is its topic's), results_io's names and run facts, the decode benchmark end to end on tiny models, and the rule
that the library never imports a benchmark."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_decode  # noqa: E402
import bench_models  # noqa: E402
import decode_throughput  # noqa: E402
import results_io  # noqa: E402

# program -> the topic folder its --out defaults to (None: it writes no result files)
PROGRAMS = {"bench_train": "training", "bench_kernels": "kernels", "bench_decode": "decode",
            "bench_la2_shapes": "kernels", "profile_la2": "kernels", "tune_la2": "kernels",
            "saved_activations": "training", "sm90_resources": None}
FACTS = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "x", "triton": "y", "command": "python benchmarks/z.py",
         "time": "2026-12-06T22:10:33+00:00"}


def test_every_program_is_listed():
    programs = {p.stem for p in BENCH.glob("*.py")} - {"results_io", "bench_models", "decode_throughput"}
    assert programs == set(PROGRAMS)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_runs_outside_the_repository(program, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(BENCH / f"{program}.py"), "--help"], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:") and not any(tmp_path.iterdir())
    topic = PROGRAMS[program]
    if topic:
        assert f"benchmarks/results/{topic}" in proc.stdout.replace("\n", " ")


def test_short_gpu_names():
    assert results_io.short_gpu("NVIDIA H100 80GB HBM3") == "H100"
    assert results_io.short_gpu("NVIDIA H200") == "H200" and results_io.short_gpu("NVIDIA A100-SXM4-80GB") == "A100"
    assert results_io.short_gpu("cpu") == "cpu" and results_io.short_gpu("") == "cpu"


def test_topic_folders():
    assert results_io.topic_dir("decode") == REPO / "benchmarks" / "results" / "decode"
    assert results_io.TOPICS == ("kernels", "training", "decode", "scaling", "reproduction")
    assert results_io.topic_dir("gpu_tests") == REPO / "benchmarks" / "results" / "gpu_tests"  # test logs
    with pytest.raises(ValueError, match="topic must be one of"):
        results_io.topic_dir("misc")


def test_write_names_files_by_what_gpu_and_minute(tmp_path, capsys):
    out = tmp_path / "kernels"

    def plot(path):
        path.write_bytes(b"\x89PNG fake")

    stem = results_io.write(out, "la2_shapes", FACTS, {"rows": [{"T": 1}]}, ["# t", "| a |"], tag="fused", plot=plot)
    assert stem == out / "la2_shapes_fused_H100_20261206T2210Z"
    assert sorted(p.name for p in out.iterdir()) == [stem.name + s for s in (".json", ".md", ".png")]
    assert json.loads(stem.with_suffix(".json").read_text()) == {"meta": FACTS, "rows": [{"T": 1}]}
    assert stem.with_suffix(".md").read_text() == "# t\n| a |\n" and "| a |" in capsys.readouterr().out
    # the same run writing again (after every row) rewrites its files; another run of that minute gets its own
    again = results_io.write(out, "la2_shapes", FACTS, {"rows": [{"T": 1}, {"T": 2}]}, "# t2", tag="fused")
    assert again == stem and len(json.loads(stem.with_suffix(".json").read_text())["rows"]) == 2
    other = results_io.write(out, "la2_shapes", {**FACTS, "time": "2026-12-06T22:10:59+00:00"}, {}, "# o",
                             tag="fused", echo=False)
    assert other.name == stem.name + "_2" and stem.with_suffix(".md").read_text() == "# t2\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(ValueError, match="what was measured"):
        results_io.write(out, "", FACTS, {}, "# x")


def test_run_facts():
    facts = results_io.run_facts("benchmarks/bench_x.py", ["--a", "1"], "cpu")
    assert facts["command"] == "python benchmarks/bench_x.py --a 1" and facts["gpu"] == "cpu"
    assert facts["torch"] == torch.__version__ and facts["transformers"]
    when = dt.datetime.fromisoformat(facts["time"])
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 60
    assert facts["git_commit"] is None or re.fullmatch(r"[0-9a-f]{12}(-dirty)?", facts["git_commit"])
    ks = facts["kernel_settings"]
    assert {"backend", "la2_algo", "fused_loss"} <= set(ks) or set(ks) == {"env"}


def test_kernel_settings_fall_back_to_the_environment(monkeypatch):
    import tnl.ops

    monkeypatch.setattr(tnl.ops, "settings", None, raising=False)
    monkeypatch.setenv("TNL_LA2_ALGO", "chunk")
    assert results_io.kernel_settings() == {"env": {"TNL_KERNEL_BACKEND": os.environ.get("TNL_KERNEL_BACKEND"),
                                                    "TNL_LA2_ALGO": "chunk",
                                                    "TNL_FUSED_CE": os.environ.get("TNL_FUSED_CE")}}


def test_stem_command_for_shell_steps(tmp_path):
    env = dict(os.environ, RESULTS=str(tmp_path / "res"))
    cmd = [sys.executable, str(BENCH / "results_io.py"), "stem"]
    proc = subprocess.run(cmd + ["scaling", "seqpar_tnl_1b_metrics"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == tmp_path / "res" / "scaling" and path.parent.is_dir()
    assert re.fullmatch(r"seqpar_tnl_1b_metrics_[A-Za-z0-9]+_\d{8}T\d{4}Z", path.name)
    bad = subprocess.run(cmd + ["misc", "x"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "topic must be one of" in bad.stderr and not (tmp_path / "res" / "misc").exists()


def test_model_configs_as_a_run_composes_them(tmp_path):
    """A name follows its defaults list (tnl_400m is tnl_385m) and gets every ModelArgs field; a yaml path must be
    flat; a typo is one ValueError naming it."""
    alias, base = bench_models.load_model_cfg("tnl_400m"), bench_models.load_model_cfg("tnl_385m")
    assert alias == base and base["num_hidden_layers"] == 24 and "gradient_checkpointing" in base
    flat = tmp_path / "mine.yaml"
    flat.write_text((REPO / "configs" / "model" / "tnl_tiny.yaml").read_text())
    assert bench_models.load_model_cfg(str(flat)) == bench_models.load_model_cfg("tnl_tiny")
    assert bench_models.label(str(flat)) == "mine" and bench_models.label("llama_385m@cudnn") == "llama_385m_cudnn"
    nested = tmp_path / "alias.yaml"
    nested.write_text("defaults:\n  - tnl_385m\n  - _self_\narch: tnl\n")
    with pytest.raises(ValueError, match="no defaults list"):
        bench_models.load_model_cfg(str(nested))
    with pytest.raises(ValueError, match="tnl_nope"):
        bench_models.load_model_cfg("tnl_nope")


def test_decode_benchmark_runs_on_tiny_models():
    result = bench_decode.run("tnl_tiny", "llama_tiny", contexts=[8, 40], batches=[2], steps=2, warmup=1,
                              device="cpu", dtype=torch.float32, prefill_tokens=32, tnl_graph=True)
    assert len(result["rows"]) == 6 and all(isinstance(r["ms_per_token"], float) for r in result["rows"])
    md = bench_decode.markdown(result)
    assert "| tnl_tiny | 2 |" in md and "| llama_tiny | 2 |" in md and "| tnl_tiny+cudagraph | 2 |" in md
    assert len(result["checks"]) == 2  # flatness of both TNL variants (no 32K context here)


def test_decode_benchmark_writes_its_topic_files(tmp_path):
    argv = ["--tnl", "tnl_tiny", "--llama", "llama_tiny", "--contexts", "8", "--batches", "1", "--steps", "1",
            "--warmup", "1", "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path), "--tag", "t"]
    assert bench_decode.main(argv) == 0
    (js,) = tmp_path.glob("*.json")
    assert re.fullmatch(r"decode_tnl_tiny_vs_llama_tiny_t_cpu_\d{8}T\d{4}Z\.json", js.name)
    doc = json.loads(js.read_text())
    assert doc["meta"]["command"] == "python benchmarks/bench_decode.py " + " ".join(argv)
    assert [r["model"] for r in doc["rows"]] == ["tnl_tiny", "llama_tiny"] and js.with_suffix(".md").is_file()
    assert bench_decode.main(argv[:1] + ["nope"] + argv[2:]) == 1  # an unknown model: one error, no files
    assert len(list(tmp_path.iterdir())) == 2


def test_decode_throughput_runs_on_tiny_models():
    tp = decode_throughput.run_throughput(bench_decode.build_hf, "tnl_tiny", "llama_tiny", contexts=[8, 40], batch=3,
                                          steps=2, warmup=1, device="cpu", dtype=torch.float32, prefill_tokens=32)
    assert [(r["model"], r["context"]) for r in tp["rows"]] == [
        ("tnl_tiny", 8), ("tnl_tiny", 40), ("llama_tiny+static", 8), ("llama_tiny+static", 40)]  # no compile on CPU
    assert all(isinstance(r["tokens_per_s"], float) and r["tokens_per_s"] > 0 and r["batch"] == 3 for r in tp["rows"])
    assert len(tp["checks"]) == 2 and "fastest LLaMA (llama_tiny+static)" in tp["checks"][0]
    md = "\n".join(decode_throughput.markdown(tp))
    assert "| tnl_tiny | 3 |" in md and "| llama_tiny+static | 3 |" in md and "ctx 40" in md


def test_decode_throughput_is_written_beside_the_latency_table(tmp_path):
    argv = ["--tnl", "tnl_tiny", "--llama", "llama_tiny", "--contexts", "8", "40", "--batches", "1", "--steps", "1",
            "--warmup", "1", "--device", "cpu", "--dtype", "float32", "--prefill-tokens", "32", "--out",
            str(tmp_path), "--throughput-batch", "2", "--throughput-contexts", "8", "--throughput-steps", "2"]
    assert bench_decode.main(argv) == 0
    (js,) = tmp_path.glob("*.json")
    doc = json.loads(js.read_text())
    assert [r["model"] for r in doc["rows"]] == ["tnl_tiny", "tnl_tiny", "llama_tiny", "llama_tiny"]
    tp = doc["throughput"]
    assert tp["batch"] == 2 and tp["steps"] == 2 and tp["llama_compile"] is False
    assert [(r["model"], r["context"]) for r in tp["rows"]] == [("tnl_tiny", 8), ("llama_tiny+static", 8)]
    md = js.with_suffix(".md").read_text()
    latency, _, throughput = md.partition("## Decode throughput (generated tokens/s), batch 2")
    assert "| tnl_tiny | 1 |" in latency and "| tnl_tiny | 2 |" not in latency
    assert "| tnl_tiny | 2 |" in throughput and "| llama_tiny+static | 2 |" in throughput
    # the throughput table alone; --no-latency without it is refused before anything is written
    assert bench_decode.main(argv + ["--no-latency", "--tag", "only"]) == 0
    (only,) = tmp_path.glob("*_only_*.json")
    assert json.loads(only.read_text())["rows"] == [] and "| ctx 8 |" in only.with_suffix(".md").read_text()
    n = len(list(tmp_path.iterdir()))
    assert bench_decode.main(argv[:-6] + ["--no-latency", "--tag", "x"]) == 1
    assert bench_decode.main(argv + ["--throughput-steps", "0", "--tag", "y"]) == 1
    assert len(list(tmp_path.iterdir())) == n


def _dynamic_greedy(model, ids, new_tokens):
    """Reference: greedy decoding with transformers' default (dynamic) cache, whole prompt at once; tokens, logits."""
    key = bench_decode._CACHE_KEY
    out = model(input_ids=ids, use_cache=True)
    toks, logits = [], [out.logits[:, -1]]
    for _ in range(new_tokens):
        toks.append(logits[-1].argmax(-1))
        out = model(input_ids=toks[-1][:, None], use_cache=True, **{key: out[key]})
        logits.append(out.logits[:, -1])
    return torch.stack(toks, 1), torch.stack(logits, 1)


@torch.no_grad()
@pytest.mark.parametrize("chunk", [None, 7])
def test_llama_static_cache_decodes_like_the_dynamic_cache(chunk):
    torch.manual_seed(5)
    model = bench_decode.build_hf(bench_models.model_args("llama_tiny"), "cpu", torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (3, 19))
    want_tokens, want_logits = _dynamic_greedy(model, ids, 5)
    dec = decode_throughput.StaticLlamaDecoder(model, 3, 19 + 5)
    logits = [dec.prefill(ids, chunk)]
    for i in range(5):
        logits.append(dec.step(want_tokens[:, i]))
    torch.testing.assert_close(torch.stack(logits, 1), want_logits, rtol=1e-4, atol=1e-4)
    dec = decode_throughput.StaticLlamaDecoder(model, 3, 19 + 5)
    assert torch.equal(dec.greedy(ids, 5, chunk), torch.cat([ids, want_tokens], 1))
    with pytest.raises(ValueError, match="holds 24 positions"):
        dec.step(want_tokens[:, 0])  # the cache is full: refused, not written out of bounds
    with pytest.raises(ValueError, match="built for batch 3"):
        decode_throughput.StaticLlamaDecoder(model, 3, 30).prefill(ids[:2])


@pytest.mark.gpu
@torch.no_grad()
def test_llama_compiled_static_decode_matches_eager_on_gpu():
    torch.manual_seed(6)
    model = bench_decode.build_hf(bench_models.model_args("llama_tiny"), "cuda", torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (4, 33), device="cuda")
    want = decode_throughput.StaticLlamaDecoder(model, 4, 33 + 8).greedy(ids, 8, chunk=16)
    got = decode_throughput.StaticLlamaDecoder(model, 4, 33 + 8, compile=True).greedy(ids, 8, chunk=16)
    assert torch.equal(got, want)


def test_the_library_never_imports_a_benchmark():
    pattern = re.compile(r"^\s*(from|import)\s+(benchmarks|results_io|bench_\w+)\b", re.M)
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tnl").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
