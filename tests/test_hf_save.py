"""save_pretrained is self-contained: config.json's auto_map plus the bundled modeling code, from TnlForCausalLM,
from TnlConfig, and again from a copy loaded with trust_remote_code where tnl is not importable; bit-identical
weights and equal logits on every round trip. The model card of an export."""

import json

import pytest
import torch
from no_tnl import run_without_tnl

import tnl  # noqa: F401  (registers the Auto classes and the bundler)
from tnl.hf import TnlConfig, TnlForCausalLM, export_pretrained
from tnl.hf.bundle import bundle_sources
from tnl.hf.card import CardInfo
from tnl.models import build_model

V = 61


def tiny_config(**kw) -> TnlConfig:
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
               pad_token_id=0)
    return TnlConfig(**(cfg | kw))


def random_model(seed: int, **kw) -> TnlForCausalLM:
    torch.manual_seed(seed)
    model = TnlForCausalLM(tiny_config(**kw)).eval()
    with torch.no_grad():  # away from the init, so that a weight not saved or not loaded shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def assert_self_contained(folder) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_tnl.TnlConfig",
                               "AutoModelForCausalLM": "modeling_tnl.TnlForCausalLM"}
    for name, source in bundle_sources().items():
        assert (folder / name).read_text(encoding="utf-8") == source, name


@pytest.mark.parametrize("kw", [{}, {"gate_rank": 3, "tie_word_embeddings": False}])
def test_model_save_pretrained_round_trip_in_process(tmp_path, kw):
    from transformers import AutoModelForCausalLM

    model = random_model(0, **kw)
    model.save_pretrained(tmp_path / "m")
    assert_self_contained(tmp_path / "m")
    ids = torch.randint(1, V, (2, 9))
    want = model(ids).logits.detach()
    for loaded in (TnlForCausalLM.from_pretrained(tmp_path / "m"),
                   AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)):
        sd, ref = loaded.state_dict(), model.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, want)


def test_config_save_pretrained_writes_auto_map_and_code(tmp_path, monkeypatch):
    cfg = tiny_config(gate_rank=2)
    cfg.save_pretrained(tmp_path / "c")
    assert_self_contained(tmp_path / "c")
    assert TnlConfig.from_pretrained(tmp_path / "c").gate_rank == 2
    pushed = []  # push_to_hub=True saves locally, then hands over to push_to_hub (it re-saves into a fresh folder)
    monkeypatch.setattr(TnlConfig, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, kw)))
    cfg.save_pretrained(tmp_path / "p", push_to_hub=True, repo_id="me/tiny", commit_message="m")
    assert_self_contained(tmp_path / "p")
    assert pushed == [("me/tiny", {"commit_message": "m"})]


def test_remote_copy_saves_a_self_contained_folder_again(tmp_path):
    """save_pretrained -> load where tnl is not importable -> save_pretrained there -> load that in a third process
    without tnl: the same weights bit for bit, the same logits and greedy tokens each time."""
    model = random_model(1)
    model.save_pretrained(tmp_path / "a")
    ids = torch.randint(1, V, (2, 7))
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        torch.save({"ids": ids, "logits": model(ids).logits, "gen": gen, "sd": model.state_dict()}, tmp_path / "io.pt")
    code = """
        import sys, torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        assert "tnl" not in sys.modules and type(m).__module__.startswith("transformers_modules")
        io = torch.load(sys.argv[2])
        sd = m.state_dict()
        assert sd.keys() == io["sd"].keys() and all(torch.equal(sd[k], io["sd"][k]) for k in sd)
        with torch.no_grad():
            assert torch.equal(m(io["ids"]).logits, io["logits"])
            g = m.generate(io["ids"], max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.equal(g, io["gen"]), (g, io["gen"])
        if len(sys.argv) > 3:
            m.save_pretrained(sys.argv[3])
        print("REMOTE-OK")
    """
    for step, argv in enumerate([["a", "io.pt", "b"], ["b", "io.pt"]]):
        r = run_without_tnl(code, tmp_path, tmp_path / f"modules{step}", args=argv)
        assert r.returncode == 0 and "REMOTE-OK" in r.stdout, r.stdout + r.stderr[-3000:]
    assert_self_contained(tmp_path / "b")


def test_export_writes_a_model_card(tmp_path):
    torch.manual_seed(2)
    core = build_model(dict(arch="tnl", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=40))
    info = CardInfo(name="tiny-run", step=30, tokens=123456, data="demo: the docs", data_tokens={"train": 9999},
                    val_loss=2.5, val_step=30)
    out = export_pretrained(core, tmp_path / "hf", card=info)
    card = (out / "README.md").read_text()
    params = sum(p.numel() for p in core.parameters())
    for needle in ("library_name: transformers", "# tiny-run", "TransNormerLLM", "2 layers, width 32",
                   f"{params:,}", "123,456 (30 steps)", "demo: the docs (train 9,999 tokens)",
                   "2.5000 nats/token (perplexity 12.18) at step 30", "trust_remote_code=True"):
        assert needle in card, needle
    bare = (export_pretrained(core, tmp_path / "bare") / "README.md").read_text()
    assert "tokens trained" not in bare and "held-out loss" not in bare and f"{params:,}" in bare
    llama = build_model(dict(arch="llama", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=40))
    text = (export_pretrained(llama, tmp_path / "llama") / "README.md").read_text()
    assert "LlamaForCausalLM" in text and "trust_remote_code" not in text
