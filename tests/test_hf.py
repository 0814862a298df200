"""tnl.hf: TnlForCausalLM (recurrent generate), Auto registration, export (TNL remote code, stock LLaMA)."""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import tnl  # noqa: F401  (registers the Auto classes)
import tnl.ops
from tnl.hf import TnlCache, TnlConfig, TnlForCausalLM, export_pretrained
from tnl.hf.export import tnl_config_from_args
from tnl.models import build_model

V = 53


def tiny(arch="tnl", **kw):
    cfg = dict(arch=arch, vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
               intermediate_size=40, pad_token_id=0)
    cfg.update(kw)
    return cfg


def pair(seed=0, **kw):
    """A core TnlLM and a TnlForCausalLM holding the same weights (loaded by name, strictly)."""
    torch.manual_seed(seed)
    core = build_model(tiny(**kw)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so that greedy ties are unlikely
        for p in core.parameters():
            p.mul_(8.0) if p.dim() == 2 and p.shape[0] != 4 else None
    hf = TnlForCausalLM(tnl_config_from_args(core.args)).eval()
    hf.load_state_dict(core.state_dict(), strict=True)
    return core, hf


def greedy(hf, ids, n, **kw):
    return hf.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None, **kw)


@pytest.mark.parametrize("kw", [{}, {"gate_rank": 3}, {"tie_word_embeddings": False}])
def test_hf_model_has_core_names_and_equal_logits(kw):
    core, hf = pair(**kw)
    ids = torch.randint(1, V, (2, 11))
    with torch.no_grad():
        assert torch.equal(core(ids).logits, hf(ids, use_cache=False).logits)
    labels = torch.randint(0, V, (2, 11))
    loss = hf(ids, labels=labels, use_cache=False).loss
    want = torch.nn.functional.cross_entropy(hf(ids, use_cache=False).logits[:, :-1].reshape(-1, V),
                                             labels[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("kw", [{}, {"gate_rank": 3, "lrpe_layers": [0, 1]}])
def test_prefill_plus_recurrent_steps_equal_full_sequence(kw, monkeypatch):
    _, hf = pair(seed=1, **kw)
    steps = []
    import tnl.models.tnl as tnl_model  # the module that calls the step

    real_step = tnl_model.lightning_attn_step
    monkeypatch.setattr(tnl_model, "lightning_attn_step", lambda *a: steps.append(a[0].shape) or real_step(*a))
    ids = torch.randint(1, V, (2, 14))
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits
        cache = TnlCache(hf.config.num_hidden_layers)
        got = [hf(ids[:, :6], past_key_values=cache, use_cache=True).logits]
        assert cache.get_seq_length() == 6 and all(s.shape == (2, 4, 16 if i in hf.args.lrpe_layers else 8, 8)
                                                  for i, s in enumerate(cache.states))
        for t in range(6, 14):
            got.append(hf(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert torch.allclose(torch.cat(got, 1), full, atol=1e-5, rtol=1e-4)
    assert len(steps) == 8 * hf.config.num_hidden_layers  # every decode token is one O(1) step per layer


def test_generate_with_and_without_cache_gives_identical_tokens():
    _, hf = pair(seed=2)
    ids = torch.randint(1, V, (3, 9))
    with torch.no_grad():
        a = greedy(hf, ids, 10)
        b = greedy(hf, ids, 10, use_cache=False)
        torch.manual_seed(7)
        sa = hf.generate(ids, max_new_tokens=8, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=None)
        torch.manual_seed(7)
        sb = hf.generate(ids, max_new_tokens=8, do_sample=True, top_k=0, pad_token_id=0, eos_token_id=None,
                         use_cache=False)
    assert a.shape == (3, 19) and torch.equal(a, b)
    assert len(set(a[:, 9:].flatten().tolist())) > 1  # not a degenerate constant output
    assert torch.equal(sa, sb)


def test_left_padded_batch_equals_unpadded_rows():
    _, hf = pair(seed=3)
    rows = [torch.randint(1, V, (n,)) for n in (8, 3, 6)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = r, 1
    with torch.no_grad():
        batch = greedy(hf, ids, 7, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = greedy(hf, r[None], 7)
            assert torch.equal(batch[i, T:], alone[0, len(r):]), i


def test_beam_search_reorders_states():
    _, hf = pair(seed=4)
    ids = torch.randint(1, V, (2, 7))
    with torch.no_grad():
        a = greedy(hf, ids, 6, num_beams=3)
        b = greedy(hf, ids, 6, num_beams=3, use_cache=False)
    assert torch.equal(a, b)


def test_auto_classes_are_registered():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("tnl", vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=24)
    assert isinstance(cfg, TnlConfig)
    assert type(AutoModelForCausalLM.from_config(cfg)) is TnlForCausalLM


def test_tnl_export_roundtrip_in_process(tmp_path):
    from transformers import AutoModelForCausalLM

    core, _ = pair(seed=5, gate_rank=2)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    out = export_pretrained(core, tmp_path / "hf", tokenizer_dir=tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_tnl.TnlForCausalLM" and cfg["gate_rank"] == 2
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    kernels = Path(tnl.__file__).resolve().parents[1] / "kernels" / "tnl_kernels"
    for f in kernels.glob("*.py"):
        assert (out / ("tnl_kernels.py" if f.stem == "__init__" else f"tnl_kernels_{f.stem}.py")).is_file(), f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    ids = torch.randint(1, V, (2, 10))
    with torch.no_grad():
        want = core(ids).logits
        for loaded in (TnlForCausalLM.from_pretrained(out),
                       AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)):
            assert torch.equal(loaded.eval()(ids).logits, want)
    wrapped = torch.nn.Module()
    wrapped.module = core  # like a DeepSpeed / DDP wrapper
    export_pretrained(wrapped, out)  # unwraps, and replaces the existing export
    assert (out / "config.json").is_file() and not (out / "tokenizer.json").exists()


def test_export_failure_leaves_nothing(tmp_path):
    meta = build_model(tiny(), device="meta")
    with pytest.raises(ValueError, match="meta"):
        export_pretrained(meta, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="tnl.models"):
        export_pretrained(torch.nn.Linear(2, 2), tmp_path / "hf")


def test_remote_code_loads_where_tnl_is_not_importable(tmp_path):
    """A subprocess without the repo on sys.path and without site .pth files (so no editable finder) loads the
    export with trust_remote_code, gets the same logits and generates."""
    from tnl.hf.bundle import bundle_sources, kernel_data_files

    core, hf = pair(seed=6)
    out = export_pretrained(core, tmp_path / "hf")
    data = kernel_data_files()  # e.g. the kernels' tuned table: must reach the remote-code cache
    embedders = {f[:-3]: [n for n in data if n in src] for f, src in bundle_sources().items()
                 if "data files bundled by tnl.hf.bundle" in src}
    assert bool(embedders) == bool(data)
    ids = torch.randint(1, V, (2, 9))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": core(ids).logits, "gen": greedy(hf, ids, 5)}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        try:
            import tnl
            sys.exit("tnl is importable: " + str(tnl.__file__))
        except ImportError:
            pass
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        assert "tnl" not in sys.modules and "tnl_kernels" not in sys.modules
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            assert torch.equal(m(io["ids"]).logits, io["logits"])
            g = m.generate(io["ids"], max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(g, io["gen"]), (g, io["gen"])
        import importlib, pathlib
        pkg = type(m).__module__.rsplit(".", 1)[0]
        for mod, names in {embedders!r}.items():
            f = pathlib.Path(importlib.import_module(pkg + "." + mod).__file__)
            assert all((f.parent / n).is_file() for n in names), (mod, names)
        print("REMOTE-OK", type(m).__module__)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "REMOTE-OK transformers_modules" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("tied", [True, False])
def test_llama_exports_as_stock_llama(tmp_path, tied):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(8)
    core = build_model(tiny("llama", tie_word_embeddings=tied, rope_theta=5000.0)).eval()
    with torch.no_grad():
        for p in core.parameters():
            p.normal_(1.0, 0.2) if p.dim() == 1 else p.normal_(0, 0.2)
    out = export_pretrained(core, tmp_path / "llama")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in cfg
    assert not list(out.glob("*.py"))
    ids = torch.randint(1, V, (2, 13))
    with torch.no_grad():
        want = core(ids).logits
        m = AutoModelForCausalLM.from_pretrained(out).eval()
        assert type(m) is LlamaForCausalLM
        got = m(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("use_core", [False, True])
def test_graph_decoder_eager_logic_equals_generate(use_core):
    """GraphDecoder's step (static buffers, position as a tensor; a CUDA graph replay on GPU) run eagerly on CPU
    gives generate()'s greedy tokens, with a chunked prefill."""
    from tnl.hf.graph_decode import GraphDecoder

    core, hf = pair(seed=9, gate_rank=2)
    ids = torch.randint(1, V, (2, 11))
    with torch.no_grad():
        want = greedy(hf, ids, 7)
    dec = GraphDecoder(core if use_core else hf, batch_size=2, use_graph=False)
    assert torch.equal(dec.greedy(ids, 7), want)
    logits = dec.prefill(ids, chunk=4)  # reusable: prefill again (chunked) then step
    assert torch.equal(logits.argmax(-1), want[:, 11])
    with pytest.raises(ValueError, match="batch 2"):
        dec.prefill(ids[:1])
