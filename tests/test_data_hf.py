"""Hugging Face datasets as corpora (data.hf): a save_to_disk folder, a local dataset folder, builder + data_files,
streamed or not, give the same tokens as the same documents in a .jsonl file; the dataset's identity in the manifest;
a changed dataset is rebuilt, and refused when a run resumes on it; one clear error (and nothing written) for an
unreachable Hub, a missing split, a missing or non-text column, an empty dataset."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procs import repo_env
from test_data_prepare import make_docs, shard_docs, write_jsonl

from tnl.data import DataError, PackedLoader, is_prepared, prepare, read_manifest

datasets = pytest.importorskip("datasets")  # a declared dependency; skipped only where tnl is half installed
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """datasets' cache (arrow conversions of non-streamed data files) in the test's folder, not the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """200 train + 40 validation documents as a DatasetDict on disk, as parquet files and as .jsonl, plus a
    prepared reference (from the .jsonl) whose tokenizer every build reuses."""
    tmp = tmp_path_factory.mktemp("hf")
    docs = make_docs(240, seed=3)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": docs[:200], "n": list(range(200))}),
        "validation": datasets.Dataset.from_dict({"body": docs[200:], "n": list(range(40))})})
    dd.save_to_disk(str(tmp / "disk"))
    (tmp / "pq").mkdir()
    dd["train"].to_parquet(str(tmp / "pq" / "train-00000.parquet"))
    dd["validation"].to_parquet(str(tmp / "pq" / "validation-00000.parquet"))
    write_jsonl(tmp / "train.jsonl", docs[:200])
    ref = prepare({"name": "ref", "inputs": [str(tmp / "train.jsonl")], "dir": str(tmp / "ref"), "vocab_size": 400,
                   "val_fraction": 0.0, "text_field": "body", "num_workers": 1})
    return {"tmp": tmp, "docs": docs, "ref": ref}


def hf_cfg(corpus, out: Path, hf: dict, **kw) -> dict:
    return {"name": "h", "hf": hf, "dir": str(out), "tokenizer": str(corpus["ref"]), "val_fraction": 0.0,
            "text_field": "body", "num_workers": 1} | kw


@pytest.mark.parametrize("source", ["disk", "folder", "folder_streamed", "builder_files"])
def test_dataset_sources_give_the_tokens_of_the_same_jsonl(corpus, tmp_path, source):
    tmp = corpus["tmp"]
    hf = {"disk": {"path": str(tmp / "disk"), "val_split": "validation"},
          "folder": {"path": str(tmp / "pq"), "val_split": "validation"},
          "folder_streamed": {"path": str(tmp / "pq"), "val_split": "validation", "streaming": True},
          "builder_files": {"path": "parquet", "data_files": {"train": str(tmp / "pq" / "train-*.parquet"),
                                                              "validation": str(tmp / "pq" / "validation-*.parquet")},
                            "val_split": "validation"}}[source]
    out = prepare(hf_cfg(corpus, tmp_path / "out", hf))
    got, want = shard_docs(out), shard_docs(corpus["ref"])
    assert len(got) == 200 and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert len(shard_docs(out, "val")) == 40  # the val_split, not a fraction of the train rows
    m = read_manifest(out)
    ident = m["inputs"][0]["hf"]
    assert m["inputs"][0]["path"].endswith("[train]") and m["val_inputs"][0]["hf"]["split"] == "validation"
    if source == "disk":
        assert ident["source"] == "disk" and ident["fingerprint"] == datasets.load_from_disk(
            str(tmp / "disk"))["train"]._fingerprint and m["inputs"][0]["rows"] == 200
    else:
        assert ident["source"] == "files" and ident["files"][0]["name"] == "train-00000.parquet"
        assert len(ident["files"][0]["sha256"]) == 64
    assert m["documents"] == {"hf": "one dataset row is one document (column 'body')"}
    assert m["config"]["hf"]["path"] == hf["path"] and is_prepared(hf_cfg(corpus, tmp_path / "out", hf))
    batch = next(iter(PackedLoader(out, "val", 16, 2)))
    assert batch["input_ids"].shape == (2, 16)


def test_streaming_and_not_read_the_same_identity(corpus, tmp_path):
    """Streaming only changes how rows are read: the same shards, so switching it rebuilds nothing."""
    hf = {"path": str(corpus["tmp"] / "pq")}
    c = hf_cfg(corpus, tmp_path / "out", hf, val_fraction=0.1)
    prepare(c)
    assert is_prepared(c | {"hf": hf | {"streaming": True}})


def test_changed_dataset_is_rebuilt(corpus, tmp_path):
    docs = corpus["docs"]
    datasets.Dataset.from_dict({"body": docs[:120]}).save_to_disk(str(tmp_path / "d"))
    c = hf_cfg(corpus, tmp_path / "out", {"path": str(tmp_path / "d")}, val_fraction=0.1)
    fp = read_manifest(prepare(c))["fingerprint"]
    assert is_prepared(c)
    datasets.Dataset.from_dict({"body": docs[:100]}).save_to_disk(str(tmp_path / "d2"))
    (tmp_path / "d").rename(tmp_path / "old")
    (tmp_path / "d2").rename(tmp_path / "d")  # same folder, other data: another dataset fingerprint
    assert not is_prepared(c)
    m = read_manifest(prepare(c))
    assert m["fingerprint"] != fp and m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == 100


def bad_cases(tmp: Path, corpus) -> dict:
    datasets.Dataset.from_dict({"body": []}, features=datasets.Features({"body": datasets.Value("string")})
                               ).save_to_disk(str(tmp / "empty"))
    (tmp / "emptypq").mkdir()
    datasets.Dataset.from_dict({"body": []}, features=datasets.Features({"body": datasets.Value("string")})
                               ).to_parquet(str(tmp / "emptypq" / "train.parquet"))
    src = corpus["tmp"]
    return {
        "hub_offline": ({"path": "nobody/no-such-dataset"}, {}, "cannot reach the Hugging Face Hub"),
        "split_disk": ({"path": str(src / "disk"), "split": "test"}, {}, "split 'test' does not exist.*train, valid"),
        "split_files": ({"path": str(src / "pq"), "split": "test"}, {}, "split 'test' does not exist.*train"),
        "val_split": ({"path": str(src / "disk"), "val_split": "dev"}, {}, "split 'dev' does not exist"),
        "field_disk": ({"path": str(src / "disk")}, {"text_field": "content"}, "no text column 'content'.*body, n"),
        "field_files": ({"path": str(src / "pq"), "streaming": True}, {"text_field": "content"},
                        "no text column 'content'"),
        "not_text": ({"path": str(src / "disk")}, {"text_field": "n"}, "column 'n' holds int64, expected strings"),
        "empty_disk": ({"path": str(tmp / "empty")}, {}, "is empty"),
        "empty_files": ({"path": str(tmp / "emptypq")}, {}, "is empty"),
        "option": ({"path": str(src / "disk"), "splitt": "train"}, {}, "unknown data.hf option.*splitt"),
        "disk_name": ({"path": str(src / "disk"), "name": "en"}, {}, "save_to_disk folder: data.hf.name"),
        "both": ({"path": str(src / "disk")}, {"inputs": [str(src / "train.jsonl")]}, "not both"),
        "no_path": ({"path": "???"}, {}, "data.hf.path is required"),
    }


@pytest.mark.parametrize("case", ["hub_offline", "split_disk", "split_files", "val_split", "field_disk",
                                  "field_files", "not_text", "empty_disk", "empty_files", "option", "disk_name",
                                  "both", "no_path"])
def test_bad_dataset_one_clear_error_nothing_written(corpus, tmp_path, monkeypatch, case):
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1: no network attempt
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hf, extra, pattern = bad_cases(tmp_path, corpus)[case]
    c = hf_cfg(corpus, tmp_path / "out", hf, **extra)
    with pytest.raises(DataError, match=pattern) as e:
        prepare(c)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_offline_hub_name_is_one_line(tmp_path):
    env = repo_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "data=hf",
                        "data.hf.path=nobody/no-such-dataset", f"data.dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("prepare_data: error: data.hf.path 'nobody/no-such-dataset': cannot reach")
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_hf_config_group_names_the_data_after_the_dataset(corpus):
    from tnl.config import compose, to_dict
    from tnl.data import DataConfig

    cfg = compose(["data=hf", "data.hf.path=roneneldan/TinyStories", "data.hf.streaming=true"])
    c = DataConfig.from_mapping(to_dict(cfg.data))
    assert c.name == "TinyStories" and c.dir == str(Path("data/prepared/TinyStories")) and c.hf.streaming
    assert c.inputs == () and c.hf.split == "train"
    named = DataConfig.from_mapping(to_dict(compose(["data=hf", "data.hf.path=wikitext",
                                                     "data.hf.name=wikitext-2-raw-v1"]).data))
    assert named.name == "wikitext-wikitext-2-raw-v1"


def test_progress_bar_knows_the_row_count(corpus, tmp_path, capsys):
    prepare(hf_cfg(corpus, tmp_path / "out", {"path": str(corpus["tmp"] / "disk")}, val_fraction=0.1))
    err = capsys.readouterr().err
    assert "tokenize h" in err and "200/200" in err, err[-2000:]
    json.loads((tmp_path / "out" / "manifest.json").read_text())  # complete


def test_loader_state_refuses_changed_data(corpus, tmp_path):
    """A loader state (what a checkpoint holds) names the fingerprint of the shards it was drawing from: after the
    dataset changes and the dir is rebuilt, resuming from it is refused even where the sample counts agree."""
    docs = corpus["docs"]
    datasets.Dataset.from_dict({"body": docs[:150]}).save_to_disk(str(tmp_path / "d"))
    c = hf_cfg(corpus, tmp_path / "out", {"path": str(tmp_path / "d")}, val_fraction=0.1)
    loader = PackedLoader(prepare(c), "train", 16, 2)
    next(iter(loader))
    state = json.loads(json.dumps(loader.state_dict()))
    PackedLoader(tmp_path / "out", "train", 16, 2).load_state_dict(state)  # same data: resumes
    swapped = [d[::-1] for d in docs[:150]]  # other text, similar sizes
    datasets.Dataset.from_dict({"body": swapped}).save_to_disk(str(tmp_path / "d2"))
    (tmp_path / "d").rename(tmp_path / "old")
    (tmp_path / "d2").rename(tmp_path / "d")
    fresh = PackedLoader(prepare(c), "train", 16, 2)
    state["num_samples"] = [d.num_samples for d in fresh.datasets]  # even with equal counts
    with pytest.raises(DataError, match="the data changed since this state was saved"):
        fresh.load_state_dict(state)
