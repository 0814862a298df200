"""prepare(): readers for every format, exact round trip, determinism, no-op re-runs, rebuilds, atomicity, and
one clear error for each kind of bad input (API and CLI), on small generated corpora."""

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procs import repo_env

import tnl.data.pipeline as prep
from tnl.data import DataError, PackedLoader, is_prepared, load_tokenizer, prepare, read_manifest
from tnl.data.pipeline import token_dtype

REPO = Path(__file__).resolve().parents[1]
SYLLABLES = ["an", "ber", "co", "dil", "e", "fra", "gon", "hi", "is", "jun", "ka", "lo", "mer", "no", "or", "pa",
             "qui", "ros", "sta", "tu", "u", "vel", "wi", "xa", "yo", "zen"]


def make_docs(n: int, seed: int) -> list[str]:
    """n documents of seeded pseudo-English: lines of words, digits, punctuation, odd spacing and non-ASCII."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(300)] + ["café", "naïve", "東京"]
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.integers(1, 6)):
            line = " ".join(rng.choice(words, size=rng.integers(3, 14)))
            if rng.random() < 0.3:
                line = "    " + line + f", {int(rng.integers(0, 10**6))}!"
            lines.append(line.capitalize() + ".")
        docs.append("\n".join(lines))
    return docs


def cfg(tmp_path: Path, inputs, **kw) -> dict:
    base = {"name": "t", "inputs": inputs, "dir": str(tmp_path / "out"), "vocab_size": 400, "val_fraction": 0.0,
            "num_workers": 1}
    return base | kw


def write_jsonl(path: Path, docs: list[str], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "body": d}) + "\n")
    return path


def shard_docs(out: Path, split: str = "train") -> list[np.ndarray]:
    """The token documents (each ending in EOS) of a split, via the shard files and their .docs.npy offsets."""
    docs = []
    for shard in read_manifest(out)["splits"][split]["shards"]:
        toks = np.fromfile(out / shard["path"], dtype=read_manifest(out)["dtype"])
        ends = np.load(out / shard["path"].replace(".bin", ".docs.npy"))
        docs += np.split(toks, ends[:-1])
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_docs(400, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    """One prepared dir from a .jsonl.xz input, with a 10% document-level validation split."""
    tmp = tmp_path_factory.mktemp("built")
    write_jsonl(tmp / "c.jsonl.xz", corpus, lzma.open)
    c = cfg(tmp, [str(tmp / "*.jsonl.xz")], text_field="body", val_fraction=0.1, num_workers=2)
    return c, prepare(c)


def test_round_trip_val_split_and_manifest(built, corpus):
    c, out = built
    tok = load_tokenizer(out)
    m = read_manifest(out)
    train, val = shard_docs(out, "train"), shard_docs(out, "val")
    assert len(train) + len(val) == len(corpus) == m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"]
    assert 0.05 < len(val) / len(corpus) < 0.15
    texts = [tok.decode(d[:-1]) for d in train + val]
    assert all(d[-1] == tok.eos_id and tok.eos_id not in d[:-1] for d in train + val)
    assert sorted(texts) == sorted(corpus)  # every document exactly once, decoded exactly
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 400 == tok.vocab_size
    assert m["inputs"][0]["sha256"] == prep.file_sha256(m["inputs"][0]["path"])
    assert m["config"]["val_fraction"] == 0.1 and m["build"]["tokens_per_s"] > 0
    assert is_prepared(c)


def test_rerun_is_noop_and_changes_rebuild(built, tmp_path, corpus):
    c, out = built
    before = (out / "manifest.json").stat().st_mtime_ns
    prepare(c)
    assert (out / "manifest.json").stat().st_mtime_ns == before
    # an identical build elsewhere gives identical bytes (determinism, across 1 vs 2 workers)
    other = prepare(c | {"dir": str(tmp_path / "again"), "num_workers": 1})
    for split in ("train", "val"):
        a, b = shard_docs(out, split), shard_docs(other, split)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert read_manifest(other)["tokenizer"]["sha256"] == read_manifest(out)["tokenizer"]["sha256"]
    # a changed input is noticed and rebuilt
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, corpus[:200])
    c2 = cfg(tmp_path, [str(inp)], text_field="body")
    prepare(c2)
    write_jsonl(inp, corpus[:150])
    assert not is_prepared(c2)
    assert read_manifest(prepare(c2))["splits"]["train"]["docs"] == 150
    assert not is_prepared(c2 | {"val_fraction": 0.2})  # a changed setting too
    (tmp_path / "moved").mkdir()  # the same file elsewhere (another TNL_DATA_ROOT) is still up to date
    os.replace(inp, tmp_path / "moved" / "in.jsonl")
    assert is_prepared(c2 | {"inputs": [str(tmp_path / "moved" / "in.jsonl")]})


def test_all_formats_give_the_same_tokens(built, tmp_path, corpus):
    _, out = built
    docs = corpus[:60]
    write_jsonl(tmp_path / "a.jsonl", docs)
    write_jsonl(tmp_path / "b.jsonl.gz", docs, gzip.open)
    write_jsonl(tmp_path / "c.jsonl.bz2", docs, bz2.open)
    (tmp_path / "d.txt").write_text("\n\n\n".join(docs) + "\n\n\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "e.parquet")
    names = ["a.jsonl", "b.jsonl.gz", "c.jsonl.bz2", "d.txt", "e.parquet"]
    try:
        import zstandard

        (tmp_path / "f.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "a.jsonl").read_bytes()))
        names.append("f.jsonl.zst")
    except ImportError:  # optional dependency; its absence is checked in test_zst_without_zstandard
        pass
    ref = None
    for name in names:
        c = cfg(tmp_path, [str(tmp_path / name)], text_field="body", doc_separator="\n\n\n", tokenizer=str(out),
                dir=str(tmp_path / f"out-{name}"))
        got = shard_docs(prepare(c))
        assert len(got) == 60, name
        if ref is None:
            ref = got
        assert all(np.array_equal(x, y) for x, y in zip(ref, got)), name
    # a reused tokenizer is copied, not retrained
    assert prep.file_sha256(tmp_path / "out-a.jsonl" / "tokenizer.model") == prep.file_sha256(out / "tokenizer.model")


def test_zst_without_zstandard(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl.zst").write_bytes(b"(\xb5/\xfd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard -> ImportError
    with pytest.raises(DataError, match="needs the 'zstandard' package"):
        prepare(cfg(tmp_path, [str(tmp_path / "a.jsonl.zst")]))


def test_uint32_shards_and_dtype_rule(built, tmp_path, corpus):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32 and token_dtype(4, "uint32") == np.uint32
    with pytest.raises(DataError, match="too large for token_dtype uint16"):
        token_dtype(100_000, "uint16")
    _, out = built
    write_jsonl(tmp_path / "a.jsonl", corpus[:50])
    c = cfg(tmp_path, [str(tmp_path / "a.jsonl")], text_field="body", tokenizer=str(out), token_dtype="uint32",
            val_fraction=0.2)
    d = prepare(c)
    assert read_manifest(d)["dtype"] == "uint32"
    assert (d / "train" / "shard-00000.bin").stat().st_size == 4 * read_manifest(d)["splits"]["train"]["tokens"]
    batch = next(iter(PackedLoader(d, "val", 8, 2)))
    assert int(batch["input_ids"].max()) < 400


def test_interrupted_build_never_looks_complete(built, tmp_path, corpus, monkeypatch):
    _, out = built
    write_jsonl(tmp_path / "a.jsonl", corpus[:80])
    c = cfg(tmp_path, [str(tmp_path / "a.jsonl")], text_field="body", tokenizer=str(out))
    prepare(c)
    calls = []

    def boom(self, tokens, lengths):
        calls.append(1)
        raise KeyboardInterrupt  # like Ctrl-C halfway through the shards

    monkeypatch.setattr(prep._ShardWriter, "add", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(c, force=True)
    assert calls and not is_prepared(c) and read_manifest(c["dir"]) is None
    assert not [p for p in Path(c["dir"]).iterdir() if p.name.startswith(".shards.tmp")]
    monkeypatch.undo()
    assert read_manifest(prepare(c))["splits"]["train"]["docs"] == 80 and is_prepared(c)


def bad_cases(tmp: Path) -> dict:
    (tmp / "empty.jsonl").write_text("\n\n")
    (tmp / "blank.txt").write_text("   \n\n  \n")
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (tmp / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me ".encode("latin-1") * 50)
    (tmp / "nofield.jsonl").write_text('{"body": "x"}\n')
    (tmp / "notjson.jsonl").write_text("hello\n")
    (tmp / "corrupt.jsonl.xz").write_bytes(b"\xfd7zXZ\x00 not really xz")
    (tmp / "data.csv").write_text("a,b\n")
    write_jsonl(tmp / "ok.jsonl", make_docs(40, 1))
    return {
        "missing": ([str(tmp / "nope.jsonl")], {}, "no such file"),
        "glob": ([str(tmp / "nope-*.jsonl")], {}, "no file matches"),
        "empty": ([str(tmp / "empty.jsonl")], {}, "empty corpus"),
        "blank": ([str(tmp / "blank.txt")], {}, "empty corpus"),
        "binary": ([str(tmp / "binary.txt")], {}, "binary|not UTF-8"),
        "latin1": ([str(tmp / "latin1.txt")], {}, "not UTF-8"),
        "nofield": ([str(tmp / "nofield.jsonl")], {}, "no text field 'text'"),
        "notjson": ([str(tmp / "notjson.jsonl")], {}, "not a JSON line"),
        "corrupt": ([str(tmp / "corrupt.jsonl.xz")], {}, "cannot read"),
        "csv": ([str(tmp / "data.csv")], {}, "unsupported file type"),
        "dir": ([str(tmp)], {}, "is a directory"),
        "vocab_dtype": ([str(tmp / "ok.jsonl")], {"vocab_size": 70000, "token_dtype": "uint16"}, "too large"),
        "vocab_corpus": ([str(tmp / "ok.jsonl")], {"vocab_size": 60000, "text_field": "body"}, "vocab_size=60000"),
        "unknown": ([str(tmp / "ok.jsonl")], {"vocab_sise": 512}, "unknown data option.*vocab_sise"),
        "val_none": ([str(tmp / "ok.jsonl")], {"text_field": "body", "val_fraction": 0.001}, "no validation"),
    }


@pytest.mark.parametrize("case", ["missing", "glob", "empty", "blank", "binary", "latin1", "nofield", "notjson",
                                  "corrupt", "csv", "dir", "vocab_dtype", "vocab_corpus", "unknown", "val_none"])
def test_bad_input_one_clear_error_nothing_valid(tmp_path, case):
    inputs, extra, pattern = bad_cases(tmp_path)[case]
    c = cfg(tmp_path, inputs, **extra)
    with pytest.raises(DataError, match=pattern) as e:
        prepare(c)
    assert "\n" not in str(e.value)
    out = Path(c["dir"])
    assert read_manifest(out) is None
    assert not out.exists() or not [p for p in out.rglob("*.bin")]


@pytest.mark.parametrize("case", ["missing", "unknown_override"])  # each bad input is checked above
def test_cli_bad_input_one_line_no_traceback(tmp_path, case):
    inputs, extra, pattern = bad_cases(tmp_path)["unknown" if case == "unknown_override" else case]
    if case == "unknown_override":  # a key the schema does not know, without +
        extra, pattern = {}, "vocab_sise"
    args = ["data.vocab_sise=3"] if case == "unknown_override" else []
    args += [f"data.inputs=[{inputs[0]}]", f"data.dir={tmp_path / 'out'}", "data.vocab_size=400"]
    args += [f"+data.{k}={v}" for k, v in extra.items()]
    env = repo_env()
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "data=demo", *args],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("prepare_data: error: "), r.stderr
    import re

    assert re.search(pattern, lines[0]) and "Traceback" not in r.stderr + r.stdout
    assert read_manifest(tmp_path / "out") is None


@pytest.mark.parametrize("mix, weight, needle", [
    ({"other": -1}, 1.0, "non-negative"),
    ({"other": 0}, 0.0, "positive sum"),
    (["other"], 1.0, "name:weight"),
    ({"other": "heavy"}, 1.0, "must be a number"),
    (42, 1.0, "data.mix must map"),
])
def test_mixture_options_are_checked(mix, weight, needle):
    from tnl.data import DataConfig, DataError

    with pytest.raises(DataError, match=needle):
        DataConfig.from_mapping({"name": "x", "inputs": ["a.txt"], "mix": mix, "weight": weight})


def test_mixture_spellings_agree():
    from tnl.data.config import parse_mix

    assert parse_mix({"a": 1, "b": 0.5}) == parse_mix(["a:1", "b:0.5"]) == {"a": 1.0, "b": 0.5}
    assert parse_mix(["cfg/x.yaml:0.25", "cfg/x.yaml:0.25"]) == {"cfg/x.yaml": 0.5}
    assert parse_mix(None) == {}
