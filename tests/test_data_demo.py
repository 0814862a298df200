"""The embedded demo corpus (data=demo) end to end: deterministic build recorded in the manifest, exact round
trip, the Hugging Face tokenizer giving SentencePiece's ids, no-op re-runs, and the shipped data configs."""

import json

import numpy as np
import pytest

from tnl.config import compose
from tnl.data import DataConfig, PackedLoader, hf_tokenizer_dir, is_prepared, load_tokenizer, prepare, read_manifest
from tnl.data.demo import build_python_docs
from tnl.data.pipeline import file_sha256

TRICKY = [
    "Hello  world!\n\tTabs,   runs of    spaces and 1234567 digits.",
    "  leading spaces, trailing spaces  \n\n\n",
    "Unicode: café naïve — “quotes” 漢字 😀 \u00a0nbsp \x7f",
    "Specials are text here: <s> </s> <pad> <unk> <0x0A>",
    "def f(x):\n    return x ** 2  # indented code\n",
    "",
]


def data_cfg(*overrides: str):
    return compose(list(overrides)).data  # the root config, composed as train.py and prepare_data.py do


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "prepared"
    cfg = data_cfg("data=demo", f"data.dir={out}")
    return cfg, prepare(cfg)


def test_demo_corpus_deterministic_and_in_manifest(demo, tmp_path):
    _, out = demo
    m = read_manifest(out)
    corpus = m["demo_corpus"]
    path = out / corpus["path"]
    assert corpus["bytes"] == path.stat().st_size > 1_500_000
    assert corpus["sha256"] == file_sha256(path)
    again = build_python_docs(tmp_path / "again.jsonl")  # an independent second build
    assert (again["sha256"], again["bytes"], again["documents"]) == (corpus["sha256"], corpus["bytes"],
                                                                       corpus["documents"])
    sources = [json.loads(line)["source"] for line in path.open()]
    assert sources[0].startswith("topic:") and any(s == "module:json" for s in sources)
    assert not any("test" in s.split(".") for s in sources)  # the stdlib test suite is skipped
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 4096
    assert m["splits"]["train"]["tokens"] > 300_000 and m["splits"]["val"]["docs"] > 0


def test_demo_round_trip_every_document(demo):
    _, out = demo
    tok = load_tokenizer(out)
    texts = [json.loads(line)["text"] for line in (out / "corpus" / "python_docs.jsonl").open()]
    decoded = []
    for split in ("train", "val"):
        for shard in read_manifest(out)["splits"][split]["shards"]:
            toks = np.fromfile(out / shard["path"], dtype=np.uint16)
            ends = np.load(out / shard["path"].replace(".bin", ".docs.npy"))
            for d in np.split(toks, ends[:-1]):
                decoded.append(tok.decode(d[:-1].tolist()))
                assert d.tolist() == tok.encode(decoded[-1]) + [tok.eos_id]  # the shards hold encode()'s ids
    assert sorted(decoded) == sorted(texts)
    for s in TRICKY:
        assert tok.decode(tok.encode(s)) == s


def test_encode_docs_fast_path_equals_encode(demo):
    _, out = demo
    tok = load_tokenizer(out)
    assert tok.newline_id == tok.sp.piece_to_id("<0x0A>")  # our tokenizers take the line-by-line path
    texts = [t for t in TRICKY if t] + ["\n", "a\n\nb\n", "\n\n  x  \n"]
    texts += [json.loads(line)["text"] for line in (out / "corpus" / "python_docs.jsonl").open()][:40]
    ids, lengths = tok.encode_docs(texts, np.uint16)
    expect = [i for t in texts for i in tok.encode(t) + [tok.eos_id]]
    assert ids.dtype == np.uint16 and ids.tolist() == expect
    assert lengths.tolist() == [len(tok.encode(t)) + 1 for t in texts]
    tok.newline_id = None  # the general whole-document path gives the same
    assert tok.encode_docs(texts)[0].tolist() == expect


def test_hf_tokenizer_matches_sentencepiece(demo):
    from transformers import AutoTokenizer

    _, out = demo
    sp = load_tokenizer(out)
    hf = AutoTokenizer.from_pretrained(str(hf_tokenizer_dir(out)))
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (sp.eos_id, sp.bos_id, sp.pad_id)
    assert len(hf) == sp.vocab_size
    texts = [json.loads(line)["text"] for line in (out / "corpus" / "python_docs.jsonl").open()][::3] + TRICKY
    for t in texts:
        ids = sp.encode(t)
        assert hf.encode(t) == ids, t[:80]
        assert hf.decode(ids) == t


def test_demo_rerun_is_noop_and_loader_reads_it(demo):
    cfg, out = demo
    before = (out / "manifest.json").stat().st_mtime_ns
    assert is_prepared(cfg) and prepare(cfg) == out
    assert (out / "manifest.json").stat().st_mtime_ns == before
    val = list(PackedLoader(out, "val", 128, 4, cu_seqlens=True))
    assert len(val) > 10 and all(int(b["input_ids"].max()) < 4096 for b in val)
    train = next(iter(PackedLoader(out, "train", 128, 4, seed=1)))
    assert load_tokenizer(out).decode(train["input_ids"][0].tolist()).strip()


@pytest.mark.parametrize("name,expect", [("tinyshakespeare", "tinyshakespeare/input.txt"),
                                         ("gutenberg", "gutenberg/train-*.jsonl.xz")])
def test_corpus_configs_resolve_under_data_root(monkeypatch, name, expect):
    monkeypatch.setenv("TNL_DATA_ROOT", "/some/root")
    cfg = data_cfg(f"data={name}")
    assert cfg.name == name and cfg.root == "/some/root"
    assert cfg.inputs[0] == f"/some/root/{expect}" and DataConfig.from_mapping(cfg).dir == f"data/prepared/{name}"
    monkeypatch.delenv("TNL_DATA_ROOT")
    assert data_cfg(f"data={name}").inputs[0] == f"data/{expect}"
