"""Plain-text corpora: .txt files are cut into documents (chunks at paragraph breaks by default, or paragraphs, or a
file each), so a few large files get a validation split without tuning; the rule is recorded in the manifest and in
the fingerprint (of .txt corpora only); the cut does not depend on how the file is read."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procs import repo_env
from test_data_prepare import SYLLABLES, shard_docs, write_jsonl

import tnl.data.readers as readers
from tnl.data import DataError, is_prepared, load_tokenizer, prepare, read_manifest
from tnl.data.readers import split_text

REPO = Path(__file__).resolve().parents[1]


def book(chars: int, seed: int) -> str:
    """Seeded prose: paragraphs of wrapped lines, separated by one or more (sometimes space-holding) blank lines."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(400)] + ["naïve", "東京"]
    out, n = [], 0
    while n < chars:
        lines = [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(rng.integers(1, 8))]
        para = "\n".join(lines) + rng.choice(["\n\n", "\n\n\n", "\n  \n", "\n\n\n\n"])
        out.append(para)
        n += len(para)
    return "".join(out)


def random_text(rng, n: int) -> str:
    parts = rng.choice(["word ", "x ", "longer words ", "é ", "\n", "\n\n", "\n \n", "  ", "\n\n\n"], size=n,
                       p=[.3, .2, .15, .05, .15, .05, .04, .03, .03])
    return "".join(parts)


@pytest.mark.parametrize("seed", range(4))
def test_split_text_is_exact_and_independent_of_the_pieces(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        text = random_text(rng, int(rng.integers(0, 500)))
        lo = int(rng.integers(1, 60))
        hi = [None, 2 * lo, lo + 1][int(rng.integers(0, 3))]
        whole = list(split_text([text], lo, hi))
        assert "".join(whole) == text and all(whole)
        cuts = np.sort(rng.choice(len(text) + 1, size=min(len(text) + 1, int(rng.integers(0, 30))), replace=False))
        bounds = [0, *cuts.tolist(), len(text)]
        assert list(split_text([text[a:b] for a, b in zip(bounds, bounds[1:])], lo, hi)) == whole
        for doc in whole[:-1]:  # every document but the last ends at a blank line past lo, or is cut by hi
            blank_end = doc.endswith("\n") and doc.rstrip(" \t\n").count("\n") < doc.count("\n") - 1
            assert (len(doc) >= lo and blank_end) or (hi is not None and len(doc) <= hi), (doc, lo, hi)


def test_split_text_rules_on_a_small_example():
    text = "a b\nc\n\nd e f g\n \n\nh\n\ni"
    assert list(split_text([text], 1, None)) == ["a b\nc\n\n", "d e f g\n \n\n", "h\n\n", "i"]  # paragraphs
    assert list(split_text([text], 8, 16)) == ["a b\nc\n\nd e f g\n \n\n", "h\n\ni"]
    assert list(split_text(["one two three four"], 4, 8)) == ["one two ", "three fo", "ur"]  # no line break
    assert list(split_text(["aaa\nbbbbbb\ncc"], 4, 8)) == ["aaa\n", "bbbbbb\n", "cc"]  # the last break before hi


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("books")
    for i in range(2):
        (tmp / f"book{i}.txt").write_text(book(400_000, seed=i), encoding="utf-8")
    return tmp


def cfg(books: Path, out: Path, **kw) -> dict:
    return {"name": "books", "inputs": [str(books / "book*.txt")], "dir": str(out), "vocab_size": 400,
            "val_fraction": 0.05, "num_workers": 2} | kw


def test_two_books_get_a_validation_split_by_default(books, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK", 1 << 14)  # read in small pieces: the documents must not change
    out = prepare(cfg(books, tmp_path / "out"))
    m = read_manifest(out)
    assert m["splits"]["val"]["docs"] >= 4 and m["splits"]["train"]["docs"] >= 150  # ~190 chunks
    assert m["documents"]["txt"].startswith("documents of about 4096 characters") and len(m["documents"]) == 1
    tok = load_tokenizer(out)
    got = sorted(tok.decode(d[:-1]) for split in ("train", "val") for d in shard_docs(out, split))
    per_file = [list(split_text([(books / f"book{i}.txt").read_text()], 4096, 8192)) for i in range(2)]
    assert got == sorted(d for docs in per_file for d in docs if d.strip())  # every chunk once, exactly
    for docs in per_file:  # paragraphs are short here: each chunk ends at the first break past 4096 characters
        assert all(4096 <= len(d) < 4096 + 1000 and d.endswith("\n") for d in docs[:-1])


def test_paragraphs_and_file_rules(books, tmp_path):
    base = prepare(cfg(books, tmp_path / "base"))
    para = prepare(cfg(books, tmp_path / "para", txt_split="paragraphs", tokenizer=str(base)))
    m = read_manifest(para)
    n_para = sum(len([p for p in split_text([(books / f"book{i}.txt").read_text()], 1, None) if p.strip()])
                 for i in range(2))
    assert m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == n_para
    assert m["documents"]["txt"].startswith("every blank line ends a document")
    with pytest.raises(DataError, match="no validation documents.*txt_split=chunks"):
        prepare(cfg(books, tmp_path / "file", txt_split="file", tokenizer=str(base)))
    assert read_manifest(tmp_path / "file") is None


def test_txt_rule_is_in_the_fingerprint_of_txt_corpora_only(books, tmp_path):
    c = cfg(books, tmp_path / "out")
    prepare(c)
    assert is_prepared(c) and not is_prepared(c | {"chunk_chars": 2048})
    assert not is_prepared(c | {"txt_split": "paragraphs"})
    write_jsonl(tmp_path / "rows.jsonl", [book(3000, seed=s) for s in range(40)])
    j = {"name": "j", "inputs": [str(tmp_path / "rows.jsonl")], "dir": str(tmp_path / "j"), "vocab_size": 400,
         "val_fraction": 0.1, "text_field": "body", "tokenizer": str(tmp_path / "out")}
    prepare(j)
    assert is_prepared(j | {"txt_split": "file", "chunk_chars": 100})  # .jsonl rows are documents either way
    with pytest.raises(DataError, match="txt_split must be"):
        prepare(c | {"txt_split": "sentences"})


def test_cli_prepares_a_folder_of_text_files(books, tmp_path):
    """The plain command a user with a few .txt files runs: no option about documents or validation needed."""
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "data=demo",
                        f"data.inputs=[{books}/book0.txt,{books}/book1.txt]", f"data.dir={tmp_path / 'out'}",
                        "data.vocab_size=400", "data.num_workers=2"],
                       capture_output=True, text=True, cwd=tmp_path, env=repo_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "val " in r.stdout and read_manifest(tmp_path / "out")["splits"]["val"]["docs"] > 0
