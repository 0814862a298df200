"""The data config (configs/data/*.yaml) as a validated dataclass."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tnl.data.errors import DataError
from tnl.data.hf_source import HfSpec

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("python_docs",)


def parse_mix(mix: Any) -> dict[str, float]:
    """data.mix as {data config name or .yaml path: weight}, from a mapping or a list of "name:weight" strings."""
    if mix is None:
        return {}
    if isinstance(mix, Mapping):
        items = list(mix.items())
    elif isinstance(mix, (list, tuple)) and all(isinstance(x, str) and ":" in x for x in mix):
        items = [tuple(x.rsplit(":", 1)) for x in mix]
    else:
        raise DataError(f"data.mix must map data config names to weights ({{name: weight}} or ['name:weight', ...]), "
                        f"got {mix!r}")
    out: dict[str, float] = {}
    for name, w in items:
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise DataError(f"data.mix: weight of {name!r} must be a number, got {w!r}") from None
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"data.mix: member names must be non-empty strings, got {name!r}")
        out[name.strip()] = out.get(name.strip(), 0.0) + weight
    return out


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """One dataset. Paths are used as given (Hydra resolves `${data.root}`); relative ones are relative to the cwd."""

    name: str
    inputs: tuple[str, ...]  # files, globs, or `builtin:python_docs` (the embedded demo corpus); empty with `hf`
    dir: str  # where tokenizer + shards + manifest are written
    root: str = "data"  # where corpora live; only used through interpolation in `inputs`
    val_inputs: tuple[str, ...] = ()  # a separate validation set; else `val_fraction` of the documents
    val_fraction: float = 0.01
    text_field: str = "text"  # the field of .jsonl/.parquet rows holding the document
    doc_separator: str | None = None  # .txt files: split into documents at this string (None: by txt_split)
    txt_split: str = "chunks"  # .txt files without doc_separator: chunks | paragraphs | file (tnl.data.readers)
    chunk_chars: int = 4096  # txt_split=chunks: documents of about this many characters, ended at a blank line
    hf: Any = None  # a Hugging Face dataset instead of files: {path, name, split, val_split, streaming, revision,
    # data_files, data_dir} (tnl.data.hf_source); documents are the rows' `text_field`
    vocab_size: int = 4096
    tokenizer: str | None = None  # reuse this tokenizer (a .model file or a prepared dir) instead of training
    tokenizer_train_lines: int = 200_000  # size of the deterministic line sample the tokenizer is trained on
    token_dtype: str = "auto"  # auto | uint16 | uint32
    shard_tokens: int = 1 << 28  # tokens per shard file before a new one starts
    num_workers: int | None = None  # tokenizer processes; None: all cores
    seed: int = 0
    # Training mixtures (read by the trainer, not by prepare): other data configs (a configs/data name or a .yaml
    # path) -> weight, each tokenized with THIS dataset's tokenizer and drawn from with probability proportional to
    # its weight against `weight` (this dataset's). Validation uses this dataset's split only.
    # Also a list of "name:weight" strings, which the command line accepts for paths: data.mix=['cfg/x.yaml:0.5'].
    mix: Any = None
    weight: float = 1.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> DataConfig:
        """Validate a `data` mapping (a dict or an OmegaConf node): unknown keys and bad values raise DataError."""
        if hasattr(cfg, "_metadata"):  # an OmegaConf DictConfig: resolve interpolations into a plain dict
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping):
            raise DataError(f"data config must be a mapping, got {type(cfg).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise DataError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        kw = dict(cfg)
        if kw.get("hf") is not None:
            kw["hf"] = HfSpec.from_mapping(kw["hf"])
            if kw.get("inputs") not in (None, "", [], ()):
                raise DataError("give data.inputs (files) or data.hf (a Hugging Face dataset), not both; "
                                "data=hf starts from no file inputs")
            kw["inputs"] = ()
            if kw.get("name") in (None, ""):  # e.g. user/TinyStories -> TinyStories
                kw["name"] = _safe_name(kw["hf"])
        missing = [k for k in ("name", "inputs")
                   if kw.get(k) in (None, "", []) and not (k == "inputs" and kw.get("hf") is not None)]
        if missing:
            raise DataError(f"data config needs {', '.join(missing)} (or data.hf for a Hugging Face dataset)")
        kw["inputs"] = _str_tuple(kw["inputs"], "inputs")
        kw["val_inputs"] = _str_tuple(kw.get("val_inputs") or (), "val_inputs")
        if kw.get("dir") in (None, ""):
            kw["dir"] = os.path.join("data", "prepared", str(kw["name"]))
        for key in ("vocab_size", "tokenizer_train_lines", "shard_tokens", "seed", "chunk_chars"):
            if key in kw and (isinstance(kw[key], bool) or not isinstance(kw[key], int)):
                raise DataError(f"data.{key} must be an integer, got {kw[key]!r}")
        self = cls(**kw)
        self._check()
        return self

    def _check(self) -> None:
        mix = parse_mix(self.mix)
        weights = [self.weight, *mix.values()]
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"data.weight and data.mix weights must be non-negative numbers with a positive sum, "
                            f"got weight={self.weight!r}, mix={dict(mix)!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.vocab_size < 300:
            raise DataError(f"data.vocab_size={self.vocab_size} is too small: byte fallback needs 256 + 4 special ids")
        if self.token_dtype not in ("auto", "uint16", "uint32"):
            raise DataError(f"data.token_dtype must be auto, uint16 or uint32, got {self.token_dtype!r}")
        if self.tokenizer_train_lines < 100 or self.shard_tokens < 1024:
            raise DataError("data.tokenizer_train_lines must be >= 100 and data.shard_tokens >= 1024")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 1):
            raise DataError(f"data.num_workers must be a positive integer or null, got {self.num_workers!r}")
        if self.doc_separator == "":
            raise DataError("data.doc_separator must be null or a non-empty string")
        if self.txt_split not in ("chunks", "paragraphs", "file"):
            raise DataError(f"data.txt_split must be chunks, paragraphs or file, got {self.txt_split!r}")
        if self.chunk_chars < 64:
            raise DataError(f"data.chunk_chars must be >= 64, got {self.chunk_chars}")

    @property
    def has_val_source(self) -> bool:
        """A separate validation set is given (files or a dataset split), so val_fraction does not apply."""
        return bool(self.val_inputs) or (self.hf is not None and self.hf.val_split is not None)


def _safe_name(spec) -> str:
    """A data name (and so a default data dir) from a Hugging Face dataset spec: its last path part and config."""
    base = Path(spec.path.rstrip("/\\")).name or "hf"
    name = f"{base}-{spec.name}" if spec.name else base
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _str_tuple(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
        raise DataError(f"data.{key} must be a path, a glob or a list of them, got {value!r}")
    return tuple(os.fspath(v) for v in value)


def resolve_inputs(patterns: tuple[str, ...], key: str = "inputs") -> list[str]:
    """Expand globs (sorted, deduplicated, in pattern order); a pattern matching nothing raises DataError."""
    out: list[str] = []
    for pat in patterns:
        if pat.startswith(BUILTIN_PREFIX):
            if pat[len(BUILTIN_PREFIX) :] not in BUILTINS:
                raise DataError(f"data.{key}: unknown builtin corpus {pat!r}; known: {', '.join(BUILTINS)}")
            matches = [pat]
        elif glob.has_magic(pat):
            matches = sorted(glob.glob(pat))
            if not matches:
                raise DataError(f"data.{key}: no file matches {pat!r} (cwd {os.getcwd()})")
        else:
            if not Path(pat).exists():
                raise DataError(f"data.{key}: no such file {pat!r} (cwd {os.getcwd()})")
            matches = [pat]
        for m in matches:
            if not m.startswith(BUILTIN_PREFIX) and Path(m).is_dir():
                raise DataError(f"data.{key}: {m!r} is a directory; give files or a glob such as {m}/*.jsonl")
            if m not in out:
                out.append(m)
    return out
