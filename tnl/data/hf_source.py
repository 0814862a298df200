"""Hugging Face datasets as a corpus (data.hf): a Hub dataset, a `save_to_disk` folder, or local files.

    data.hf.path        a Hub dataset ("user/name"), a save_to_disk folder, a local dataset folder (parquet / arrow /
                        json / csv / text files, as load_dataset reads it), or a builder name (parquet, json, arrow,
                        csv, text) together with data.hf.data_files
    data.hf.name        the dataset's config (subset), or null
    data.hf.split       the training split (default train); data.hf.val_split: a split read as the validation set
    data.hf.streaming   read the rows as a stream instead of downloading and converting the whole split first
                        (a save_to_disk folder is memory-mapped and read in batches either way)
    data.hf.revision    a Hub branch, tag or commit; the commit it resolves to is what gets read and recorded
    data.hf.data_files  files or globs (a list, or {split: files}) for a builder name, or a subset of a dataset
    data.hf.data_dir    a sub-folder of the dataset
Each row's `data.text_field` column is one document. describe() checks the source before anything is written (it
exists, the split exists, the column exists and holds text, there are rows) and returns its identity for the
manifest, which the shards' fingerprint covers: the Hub commit, the sha256 of local data files, or the fingerprint of a
save_to_disk dataset. A changed dataset therefore means other shards, and a run's checkpoints refuse them.
Hub and local files go through the same datasets builder (load_dataset's own path), streamed or not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tnl.data.errors import DataError
from tnl.data.tokenizer import file_sha256

PREFIX = "hf:"
_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class HfSpec:
    path: str
    name: str | None = None
    split: str = "train"
    val_split: str | None = None
    streaming: bool = False
    revision: str | None = None
    data_files: Any = None  # str | list[str] | {split: str | list[str]}
    data_dir: str | None = None

    @classmethod
    def from_mapping(cls, m: Any) -> HfSpec:
        if not isinstance(m, Mapping):
            raise DataError(f"data.hf must be a mapping with at least a path, got {m!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(m) - fields)
        if unknown:
            raise DataError(f"unknown data.hf option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        kw = {k: v for k, v in m.items() if v is not None}
        if not isinstance(kw.get("path"), str) or kw["path"].strip() in ("", "???"):  # ???: Hydra's "required"
            raise DataError("data.hf.path is required: a Hub dataset name, a save_to_disk folder or a builder name")
        for key in ("name", "split", "val_split", "revision", "data_dir"):
            if key in kw and (not isinstance(kw[key], str) or not kw[key]):
                raise DataError(f"data.hf.{key} must be a non-empty string or null, got {kw[key]!r}")
        if not isinstance(kw.get("streaming", False), bool):
            raise DataError(f"data.hf.streaming must be true or false, got {kw['streaming']!r}")
        if "data_files" in kw:
            kw["data_files"] = _files_value(kw["data_files"])
        if kw.get("val_split") is not None and kw["val_split"] == kw.get("split", "train"):
            raise DataError(f"data.hf.val_split {kw['val_split']!r} is the training split too")
        return cls(**kw)

    @property
    def label(self) -> str:
        return f"{self.path}" + (f" ({self.name})" if self.name else "")

    def is_disk(self) -> bool:
        p = Path(self.path)
        return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _files_value(v: Any) -> Any:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return list(v)
    if isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
        return {k: _files_value(x) for k, x in v.items()}
    raise DataError(f"data.hf.data_files must be a path or glob, a list of them or {{split: files}}, got {v!r}")


# ------------------------------------------------------------------------------------------------- opening
def _load_error(spec: HfSpec, err: Exception) -> DataError:
    """One line for whatever datasets / huggingface_hub raised while opening `spec`."""
    from datasets.exceptions import DatasetNotFoundError

    msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, ConnectionError) or "offline" in msg.lower():
        return DataError(f"data.hf.path {spec.path!r}: cannot reach the Hugging Face Hub and the dataset is not in "
                         "the local cache (offline?); connect, or give a save_to_disk folder or local files "
                         "(data.hf.path=parquet data.hf.data_files=[...])")
    if isinstance(err, DatasetNotFoundError):
        return DataError(f"data.hf.path {spec.path!r}: no such local folder, and no such dataset on the Hugging Face "
                         f"Hub (or no access to it): {msg}")
    if isinstance(err, FileNotFoundError):
        return DataError(f"data.hf {spec.label}: no data files found ({msg})")
    if "BuilderConfig" in msg or "Config name" in msg:
        return DataError(f"data.hf.name {spec.name!r}: not a config of {spec.path!r} ({msg})")
    return DataError(f"data.hf {spec.label}: cannot load ({type(err).__name__}: {msg})")


def _ours(err: Exception) -> bool:
    return type(err).__module__.split(".")[0] in ("datasets", "huggingface_hub", "fsspec", "pyarrow", "httpx",
                                                 "requests")


def _builder(spec: HfSpec, revision: str | None = None):
    import datasets

    try:
        return datasets.load_dataset_builder(spec.path, spec.name, data_dir=spec.data_dir,
                                             data_files=spec.data_files, revision=revision or spec.revision)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise _load_error(spec, err) from None
    except Exception as err:
        if _ours(err):
            raise _load_error(spec, err) from None
        raise


def _disk(spec: HfSpec, split: str):
    """The Dataset of `split` in a save_to_disk folder (a single saved Dataset is the data whatever the split)."""
    import datasets

    extra = [k for k in ("name", "revision", "data_files", "data_dir") if getattr(spec, k) is not None]
    if extra:
        raise DataError(f"data.hf.path {spec.path!r} is a save_to_disk folder: data.hf.{extra[0]} does not apply "
                        "(it is for Hub datasets and data files)")
    try:
        ds = datasets.load_from_disk(spec.path)
    except Exception as err:  # a folder that looks saved but is not (truncated, other version), or has no rows
        if _no_shards(Path(spec.path), split):
            raise DataError(f"data.hf {spec.label} split {split!r} is empty (no rows)") from None
        raise DataError(f"data.hf.path {spec.path!r}: not a readable save_to_disk folder "
                        f"({type(err).__name__}: {err})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"data.hf: split {split!r} does not exist in {spec.label}; it has: {', '.join(ds)}")
        return ds[split]
    if split != spec.split:  # a val_split of a single Dataset
        raise DataError(f"data.hf.val_split {split!r}: {spec.label} holds one Dataset, not a DatasetDict of splits")
    return ds


def _no_shards(folder: Path, split: str) -> bool:
    """Whether the saved Dataset (of `split`, in a saved DatasetDict) has no data files: datasets cannot load one."""
    import json

    state = folder / split / "state.json" if (folder / "dataset_dict.json").is_file() else folder / "state.json"
    try:
        return not json.loads(state.read_text())["_data_files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _splits(builder) -> list[str]:
    files = builder.config.data_files
    if files:
        return [str(s) for s in files]
    return [str(s) for s in (builder.info.splits or {})]


def _check_column(spec: HfSpec, split: str, field: str, features, first_row) -> None:
    where = f"data.hf {spec.label} split {split!r}"
    if first_row is None:
        raise DataError(f"{where} is empty (no rows)")
    columns = list(features) if features is not None else list(first_row)
    if field not in columns:
        raise DataError(f"{where} has no text column {field!r} (has: {', '.join(columns)}); set data.text_field")
    feature = features[field] if features is not None else None
    dtype = getattr(feature, "dtype", None)
    if feature is not None and dtype not in ("string", "large_string"):
        raise DataError(f"{where}: column {field!r} holds {dtype or type(feature).__name__}, expected strings")
    if features is None and not isinstance(first_row[field], str):
        raise DataError(f"{where}: column {field!r} holds {type(first_row[field]).__name__}, expected strings")


def _first(rows) -> dict | None:
    try:
        return next(iter(rows))
    except StopIteration:
        return None


def _file_identity(builder, split: str) -> list[dict] | None:
    """sha256 of the local data files of `split` (None when they are remote)."""
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    if not files or not all(os.path.isfile(f) for f in files):
        return None
    return [{"name": Path(f).name, "bytes": os.path.getsize(f), "sha256": file_sha256(f)} for f in files]


def describe(spec: HfSpec, split: str, field: str) -> dict:
    """Check `split` of the dataset and return its manifest entry {"path": "hf:...", "hf": identity, "rows": n|None}.

    Reads the metadata and the first row only (plus the sha256 of local data files); raises DataError naming the
    problem: unreachable Hub, unknown dataset / config / split, missing or non-text column, no rows."""
    entry = {"path": PREFIX + spec.path}
    if spec.is_disk():
        ds = _disk(spec, split)
        _check_column(spec, split, field, ds.features, ds[0] if ds.num_rows else None)
        identity = {"source": "disk", "path": Path(spec.path).resolve().name, "split": split,
                    "fingerprint": ds._fingerprint}
        return {**entry, "hf": identity, "rows": ds.num_rows}
    builder = _builder(spec)
    splits = _splits(builder)
    if splits and split not in splits:
        raise DataError(f"data.hf: split {split!r} does not exist in {spec.label}; it has: {', '.join(splits)}")
    rows = _stream(spec, builder, split)
    _check_column(spec, split, field, getattr(rows, "features", None), _first(rows))
    files = _file_identity(builder, split)
    identity = {"source": "files" if files is not None else "hub", "path": spec.path if files is None else
                Path(spec.path).name, "name": builder.config.name, "split": split, "data_dir": spec.data_dir}
    if files is not None:
        identity["files"] = files
    else:  # a Hub dataset: the commit it resolved to (the hash of a Hub builder) and what was asked for
        identity.update(revision=builder.hash, data_files=spec.data_files)
    info = (builder.info.splits or {}).get(split)
    return {**entry, "hf": identity, "rows": getattr(info, "num_examples", None) or None}


def _stream(spec: HfSpec, builder, split: str):
    try:
        return builder.as_streaming_dataset(split=split)
    except ValueError as err:  # e.g. "Bad split: x. Available splits: [...]"
        raise DataError(f"data.hf: split {split!r} of {spec.label}: {err}") from None
    except Exception as err:
        if _ours(err):
            raise _load_error(spec, err) from None
        raise


# ------------------------------------------------------------------------------------------------- reading
def iter_texts(spec: HfSpec, entry: dict, field: str) -> Iterator[str]:
    """The non-blank documents of the split described by `entry` (from describe), in dataset order; a Hub dataset is
    read at the commit describe() resolved, so what is read is what the manifest records."""
    hf = entry["hf"]
    split = hf["split"]
    try:
        if hf["source"] == "disk":
            rows = _batched(_disk(spec, split), field)
        else:
            builder = _builder(spec, hf.get("revision"))
            if spec.streaming:
                rows = (row[field] for row in _stream(spec, builder, split))
            else:
                builder.download_and_prepare()
                rows = _batched(builder.as_dataset(split=split), field)
        for i, text in enumerate(rows):
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"data.hf {spec.label} split {split!r}: row {i} of {field!r} is "
                                f"{type(text).__name__}, expected a string")
            if "\x00" in text:
                raise DataError(f"data.hf {spec.label} split {split!r}: row {i} looks binary (NUL byte)")
            if text.strip():
                yield text
    except DataError:
        raise
    except Exception as err:
        if _ours(err) or isinstance(err, (ConnectionError, OSError)):
            raise DataError(f"data.hf {spec.label} split {split!r}: reading failed ({type(err).__name__}: "
                            f"{(str(err).strip().splitlines() or [''])[0]})") from None
        raise


def _batched(ds, field: str) -> Iterator[Any]:
    for batch in ds.select_columns([field]).iter(batch_size=_BATCH):
        yield from batch[field]
