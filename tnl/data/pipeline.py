"""Pre-tokenization: inputs -> tokenizer -> token shards + index -> manifest.json (written last).

Layout of a prepared dir:
  tokenizer.model, tokenizer.fingerprint, hf_tokenizer/      the SentencePiece model and its Hugging Face form
  corpus/python_docs.jsonl                                   only for `builtin:python_docs` inputs (the demo corpus)
  train/ val/: shard-00000.bin (raw uint16/uint32 tokens, each document followed by EOS),
               shard-00000.docs.npy (int64 end offset of each document), index.json (shards, token/doc counts)
  manifest.json                                              the proof of completeness: is_prepared() reads it
A build first deletes manifest.json, writes shards into a temp folder and renames it into place, then writes the
manifest; an interrupted build therefore never looks complete. The manifest's fingerprint covers the sha256 of
every input, the tokenizer and every setting that changes the shards, so an unchanged re-run is a no-op.
Inputs are files, the demo corpus or Hugging Face dataset splits (tnl.data.sources; for datasets the Hub commit, the
files' sha256 or the save_to_disk fingerprint stand in for a file's sha256).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tnl.data import demo, sources
from tnl.data.config import BUILTIN_PREFIX, DataConfig, DataError
from tnl.data.shards import ShardWriter as _ShardWriter
from tnl.data.tokenizer import (
    HF_DIR,
    MODEL_FILE,
    Tokenizer,
    file_sha256,
    sample_lines,
    save_hf_tokenizer,
    train_tokenizer,
)
from tnl.locks import hold

log = logging.getLogger("tnl.data")
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_BATCH_CHARS = 1 << 20  # text per tokenizer job
_BATCH_DOCS = 1024


def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """uint16 when every id fits, else uint32; DataError when the requested dtype cannot hold the vocab."""
    if vocab_size > 1 << 32:
        raise DataError(f"vocab_size={vocab_size} does not fit any token dtype (uint32 holds 4294967296 ids)")
    if requested == "uint16" and vocab_size > 1 << 16:
        raise DataError(f"vocab_size={vocab_size} is too large for token_dtype uint16 (65536 ids); use uint32 or auto")
    if requested == "uint32" or vocab_size > 1 << 16:
        return np.dtype(np.uint32)
    return np.dtype(np.uint16)


# ---------------------------------------------------------------------------------------------- fingerprints
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class _Plan:
    """Everything a build depends on, computed without writing anything."""

    def __init__(self, c: DataConfig):
        self.c = c
        self.dir = Path(c.dir)
        self.inputs, self.val_inputs = sources.describe(c)
        reader = sources.reader_settings(c, self.inputs + self.val_inputs)
        if c.tokenizer:
            model = Path(c.tokenizer)
            model = model / MODEL_FILE if model.is_dir() else model
            if not model.is_file():
                raise DataError(f"data.tokenizer: no tokenizer model at {str(model)!r}")
            self.tokenizer_source: Path | None = model
            self.tokenizer_fp = _digest({"reuse": file_sha256(model)})
        else:
            self.tokenizer_source = None
            token_dtype(c.vocab_size, c.token_dtype)  # fail before training when the vocab cannot be stored
            self.tokenizer_fp = _digest({"train": sources.content(self.inputs), "vocab_size": c.vocab_size,
                                         "seed": c.seed, "lines": c.tokenizer_train_lines, "reader": reader,
                                         "v": FORMAT_VERSION})
        self.fingerprint = _digest({
            "v": FORMAT_VERSION, "tokenizer": self.tokenizer_fp, "inputs": sources.content(self.inputs),
            "val_inputs": sources.content(self.val_inputs),
            "val_fraction": 0.0 if c.has_val_source else float(c.val_fraction), "seed": c.seed, "reader": reader,
            "token_dtype": c.token_dtype, "shard_tokens": c.shard_tokens,
        })


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    path = Path(data_dir) / MANIFEST
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _complete(data_dir: Path, manifest: dict | None, fingerprint: str) -> bool:
    if not manifest or manifest.get("fingerprint") != fingerprint:
        return False
    if not (data_dir / MODEL_FILE).is_file() or not (data_dir / HF_DIR / "tokenizer.json").is_file():
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            p = data_dir / shard["path"]
            if not p.is_file() or p.stat().st_size != shard["tokens"] * itemsize:
                return False
    return True


def is_prepared(cfg_data: Mapping) -> bool:
    """True when `data.dir` holds shards built from exactly these inputs, tokenizer and settings."""
    plan = _Plan(DataConfig.from_mapping(cfg_data))
    return _complete(plan.dir, read_manifest(plan.dir), plan.fingerprint)


def changed_build(cfg_data: Mapping) -> str | None:
    """What differs between the complete build in `data.dir` and this config (inputs, or else settings), or None
    when they agree or there is no complete build: a run resuming on that dir must not have it rebuilt."""
    plan = _Plan(DataConfig.from_mapping(cfg_data))
    manifest = read_manifest(plan.dir)
    if not manifest or manifest.get("fingerprint") == plan.fingerprint:
        return None
    old, new = ({d["path"]: d for d in sources.content(inputs + val)} for inputs, val in
                ((manifest.get("inputs", []), manifest.get("val_inputs", [])), (plan.inputs, plan.val_inputs)))
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p))
    if changed:
        return f"its input(s) {', '.join(changed[:3])} changed"
    return "its settings changed (tokenizer, validation split, reading or shard options)"


# ---------------------------------------------------------------------------------------------- build
def prepare(cfg_data: Mapping, force: bool = False) -> Path:
    """Build (or reuse) the tokenizer and token shards of a data config; return the prepared dir."""
    c = DataConfig.from_mapping(cfg_data)
    plan = _Plan(c)
    plan.dir.mkdir(parents=True, exist_ok=True)
    with _locked(plan.dir):
        if not force and _complete(plan.dir, read_manifest(plan.dir), plan.fingerprint):
            log.debug("data %s is up to date in %s", c.name, plan.dir)
            return plan.dir
        log.info("preparing data %r into %s (tokenizer + shards)", c.name, plan.dir)
        (plan.dir / MANIFEST).unlink(missing_ok=True)  # from here on the dir does not look complete
        _build(plan, force)
    return plan.dir


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One builder per data dir at a time (e.g. several ranks, or two jobs): the others say whom they wait for, wait,
    then see it done. A builder killed mid-build releases the lock with its death (tnl.locks); what it wrote in
    the dir is never mistaken for complete (no manifest) and its temporary folders are removed by the next one."""
    waiting = lambda who: log.info("waiting for %s, which is preparing data in %s", who, data_dir)
    lock = hold(data_dir / ".lock", waiting=waiting)
    try:
        for stale in sorted(data_dir.glob(".*.tmp-*")) + sorted(data_dir.glob("corpus/.*.tmp-*")):
            log.info("removing %s, left by a data preparation that never finished", stale)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        yield
    finally:
        lock.close()


def _build(plan: _Plan, force: bool) -> None:
    c, out = plan.c, plan.dir
    t0 = time.perf_counter()
    corpus = None
    if any(d["path"].startswith(BUILTIN_PREFIX) for d in plan.inputs):
        corpus = demo.build_python_docs(out / "corpus" / "python_docs.jsonl")
        log.info("built the demo corpus from this Python's docs: %d documents, %d bytes, sha256 %s",
                 corpus["documents"], corpus["bytes"], corpus["sha256"])
    # (manifest entry, where to read it) of each input
    train = [(d, corpus["path"] if d["path"].startswith(BUILTIN_PREFIX) else d["path"]) for d in plan.inputs]
    val = [(d, d["path"]) for d in plan.val_inputs]

    model = out / MODEL_FILE
    fp_file = out / "tokenizer.fingerprint"
    reuse = (not force and model.is_file() and (out / HF_DIR / "tokenizer.json").is_file() and fp_file.is_file()
             and fp_file.read_text() == plan.tokenizer_fp)
    if not reuse:
        fp_file.unlink(missing_ok=True)
        if plan.tokenizer_source is not None:
            shutil.copyfile(plan.tokenizer_source, model.with_name(".tokenizer.model.tmp"))
            os.replace(model.with_name(".tokenizer.model.tmp"), model)
        else:
            from tqdm import tqdm

            t = time.perf_counter()
            docs = tqdm((x for d, p in train for x in sources.read(c, d, p)), desc=f"read {c.name} (tokenizer sample)",
                        unit="doc", total=sources.total_rows(plan.inputs), mininterval=1.0, dynamic_ncols=True)
            with docs:
                lines = sample_lines(docs, c.tokenizer_train_lines, c.seed)
            train_tokenizer(lines, model, c.vocab_size)
            log.info("trained a %d-token BPE tokenizer on %d sampled lines in %.1fs",
                     c.vocab_size, len(lines), time.perf_counter() - t)
        save_hf_tokenizer(model, out / HF_DIR)
        fp_file.write_text(plan.tokenizer_fp)
    tok = Tokenizer(model)
    dtype = token_dtype(tok.vocab_size, c.token_dtype)

    tmp = out / f".shards.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stats = _tokenize(plan, train, val, tok, dtype, tmp)
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
            if (tmp / split).exists():
                os.replace(tmp / split, out / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    manifest = {
        "format_version": FORMAT_VERSION,
        "name": c.name,
        "fingerprint": plan.fingerprint,
        "dtype": dtype.name,
        "tokenizer": {"file": MODEL_FILE, "sha256": file_sha256(model), "vocab_size": tok.vocab_size,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "hf_dir": HF_DIR,
                      "fingerprint": plan.tokenizer_fp},
        "inputs": plan.inputs,
        "val_inputs": plan.val_inputs,
        "demo_corpus": corpus and {**corpus, "path": "corpus/python_docs.jsonl"},
        "documents": sources.document_rules(c, plan.inputs + plan.val_inputs),
        "splits": stats["splits"],
        "config": {k: (list(v) if isinstance(v, tuple) else dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                       else v) for k, v in vars(c).items()},
        "build": {"seconds": round(time.perf_counter() - t0, 3), "tokenize_seconds": stats["seconds"],
                  "tokens_per_s": stats["tokens_per_s"], "workers": stats["workers"], "python": sys.version},
    }
    tmp_manifest = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_manifest, out / MANIFEST)
    sp = stats["splits"]
    log.info("prepared %s: train %d docs / %d tokens, val %d docs / %d tokens, %s, %.3g tokens/s",
             out, sp["train"]["docs"], sp["train"]["tokens"], sp.get("val", {}).get("docs", 0),
             sp.get("val", {}).get("tokens", 0), dtype.name, stats["tokens_per_s"])


def _workers(c: DataConfig) -> int:
    if c.num_workers:
        return c.num_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _is_val(seed: int, index: int, fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < fraction * 2.0**64


def _jobs(c: DataConfig, train, val) -> Iterator[tuple[str, list[str]]]:
    """(split, texts) batches in corpus order: train inputs (minus the held-out documents), then val_inputs."""
    frac = 0.0 if val else float(c.val_fraction)
    buf: dict[str, list[str]] = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    inputs = [("train", d, p) for d, p in train] + [("val", d, p) for d, p in val]
    i = 0
    for default_split, d, p in inputs:
        for doc in sources.read(c, d, p):
            split = "val" if default_split == "val" or (frac > 0 and _is_val(c.seed, i, frac)) else "train"
            i += 1
            buf[split].append(doc)
            size[split] += len(doc)
            if size[split] >= _BATCH_CHARS or len(buf[split]) >= _BATCH_DOCS:
                yield split, buf[split]
                buf[split], size[split] = [], 0
    for split in SPLITS:
        if buf[split]:
            yield split, buf[split]


_TOK: Tokenizer | None = None
_DTYPE = np.dtype(np.uint16)


def _init_worker(model_file: str, dtype: str) -> None:
    global _TOK, _DTYPE
    _TOK, _DTYPE = Tokenizer(model_file), np.dtype(dtype)


def _encode(job: tuple[str, list[str]]) -> tuple[str, np.ndarray, np.ndarray]:
    """One batch of documents -> (split, tokens with EOS after each document, document lengths incl. EOS)."""
    split, texts = job
    tokens, lengths = _TOK.encode_docs(texts, _DTYPE)
    return split, tokens, lengths


def _tokenize(plan: _Plan, train, val, tok: Tokenizer, dtype: np.dtype, tmp: Path) -> dict:
    from tqdm import tqdm

    c = plan.c
    writers = {s: _ShardWriter(tmp / s, dtype, c.shard_tokens) for s in SPLITS}
    jobs = _jobs(c, train, val)
    n_workers = _workers(c)
    init = (tok.model_file, dtype.name)
    t0 = time.perf_counter()
    docs = tokens = 0
    bar = tqdm(desc=f"tokenize {c.name}", unit="doc", total=sources.total_rows(plan.inputs + plan.val_inputs),
               mininterval=1.0, dynamic_ncols=True)
    try:
        for split, arr, lengths in _run(jobs, init, n_workers):
            writers[split].add(arr, lengths)
            docs += lengths.size
            tokens += arr.size
            bar.update(lengths.size)
            el = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{docs / el:.0f} docs/s {tokens / el:.3g} tokens/s", refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    splits = {s: w.close() for s, w in writers.items()}
    if splits["train"]["docs"] == 0:
        names = ", ".join(d["path"] for d, _ in train)
        raise DataError(f"the inputs of {c.name!r} hold no documents (empty corpus): {names}")
    if (val or c.val_fraction > 0) and splits["val"]["docs"] == 0:
        txt = (" (or, for .txt inputs, data.txt_split=chunks with a smaller data.chunk_chars)"
               if "txt" in sources.document_rules(c, plan.inputs) else "")
        raise DataError(f"no validation documents: val_fraction={c.val_fraction} held out none of "
                        f"{splits['train']['docs']} documents; raise it or set data.val_inputs{txt}")
    if splits["val"]["docs"] == 0:
        del splits["val"]
    for s, info in splits.items():
        (tmp / s / "index.json").write_text(json.dumps({"dtype": dtype.name, **info}, indent=1) + "\n")
    return {"splits": splits, "seconds": round(seconds, 3), "tokens_per_s": tokens / max(seconds, 1e-9),
            "workers": n_workers}


def _run(jobs, init, n_workers: int):
    """Encode jobs in order, on `n_workers` processes with a bounded queue (memory stays flat on big corpora)."""
    if n_workers <= 1:
        _init_worker(*init)
        yield from map(_encode, jobs)
        return
    # fork: workers only run SentencePiece + numpy and never touch torch/CUDA state inherited from a training
    # process; spawn would re-import tnl (torch + transformers) in every worker, seconds each.
    ctx = mp.get_context("fork")
    with ctx.Pool(n_workers, initializer=_init_worker, initargs=init) as pool:
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append(pool.apply_async(_encode, (job,)))
            if len(pending) >= 2 * n_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
