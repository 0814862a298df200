"""The inputs of a data config: what each one is (its manifest entry, which the fingerprint covers), how its
documents are read, and the document boundary rule recorded in the manifest.

An input is a file (its name, size and sha256), the embedded demo corpus (`builtin:python_docs`, its content id), or
one split of a Hugging Face dataset (`hf:<path>[<split>]`, its identity from tnl.data.hf_source).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from tnl.data import demo, hf_source
from tnl.data.config import BUILTIN_PREFIX, DataConfig, DataError, resolve_inputs
from tnl.data.readers import iter_documents, split_name, txt_rule
from tnl.data.tokenizer import file_sha256

_TXT = (".txt", ".text", ".md")


def describe_files(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        if p.startswith(BUILTIN_PREFIX):
            out.append({"path": p, "id": demo.python_docs_id()})
        else:
            split_name(p)  # unsupported type -> DataError before any work
            try:
                out.append({"path": p, "bytes": os.path.getsize(p), "sha256": file_sha256(p)})
            except OSError as e:
                raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    return out


def describe_hf(spec: hf_source.HfSpec, split: str, field: str) -> dict:
    entry = hf_source.describe(spec, split, field)
    return {**entry, "path": f"{entry['path']}[{split}]"}


def describe(c: DataConfig) -> tuple[list[dict], list[dict]]:
    """(train inputs, validation inputs) of `c` as manifest entries; checks every input before anything is written."""
    train = describe_files(resolve_inputs(c.inputs, "inputs"))
    val = describe_files(resolve_inputs(c.val_inputs, "val_inputs")) if c.val_inputs else []
    if any(d["path"].startswith(BUILTIN_PREFIX) for d in val):
        raise DataError("data.val_inputs cannot be a builtin corpus; use data.val_fraction to hold part out")
    if c.hf is not None:
        train.append(describe_hf(c.hf, c.hf.split, c.text_field))
        if c.hf.val_split is not None:
            val.append(describe_hf(c.hf, c.hf.val_split, c.text_field))
    return train, val


def content(described: list[dict]) -> list[dict]:
    """What the shards depend on: file names and contents, not where the files live (moving a corpus or changing
    TNL_DATA_ROOT does not force a rebuild), nor a dataset's row count, which is only known once it is cached."""
    return [{k: (Path(v).name if k == "path" else v) for k, v in d.items() if k != "rows"} for d in described]


def _file_formats(entries: list[dict]) -> set[str]:
    """The formats ('.txt', '.jsonl', ...) of the file inputs among `entries`."""
    return {split_name(d["path"])[0] for d in entries if not d["path"].startswith((BUILTIN_PREFIX, hf_source.PREFIX))}


def _has_txt(entries: list[dict]) -> bool:
    return bool(_file_formats(entries) & set(_TXT))


def reader_settings(c: DataConfig, entries: list[dict]) -> dict:
    """The reading settings the documents depend on (txt_split / chunk_chars only where a .txt file is split by them,
    so the fingerprints of other corpora stay what they were before those settings existed)."""
    settings = {"text_field": c.text_field, "doc_separator": c.doc_separator}
    if c.doc_separator is None and _has_txt(entries):
        settings["txt_split"] = c.txt_split
        if c.txt_split == "chunks":
            settings["chunk_chars"] = c.chunk_chars
    return settings


def document_rules(c: DataConfig, entries: list[dict]) -> dict[str, str]:
    """Where documents begin and end, per kind of input present (recorded in the manifest)."""
    rules = {}
    if _has_txt(entries):
        rules["txt"] = txt_rule(c.txt_split, c.chunk_chars, c.doc_separator)
    if any(d["path"].startswith(BUILTIN_PREFIX) for d in entries):
        rules["builtin"] = "one documentation page or module docstring is one document"
    if _file_formats(entries) - set(_TXT):
        rules["rows"] = f"one .jsonl line / parquet row is one document (field {c.text_field!r})"
    if any(d["path"].startswith(hf_source.PREFIX) for d in entries):
        rules["hf"] = f"one dataset row is one document (column {c.text_field!r})"
    return rules


def total_rows(entries: list[dict]) -> int | None:
    """The number of rows to read when every input is a dataset split of known size (for progress bars)."""
    rows = [d.get("rows") for d in entries]
    return sum(rows) if rows and all(isinstance(r, int) for r in rows) else None


def read(c: DataConfig, entry: dict, path: str) -> Iterator[str]:
    """The documents of one input (`path`: where it is read from; the built demo corpus for the builtin one, which
    is JSON lines with a "text" field whatever data.text_field)."""
    if entry["path"].startswith(hf_source.PREFIX):
        return hf_source.iter_texts(c.hf, entry, c.text_field)
    field = "text" if entry["path"].startswith(BUILTIN_PREFIX) else c.text_field
    return iter_documents(path, field, c.doc_separator, c.txt_split, c.chunk_chars)
