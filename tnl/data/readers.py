"""Streaming document readers: .txt, .jsonl, .parquet, plain or .gz/.xz/.bz2/.zst compressed.

Each reader yields one str per document without loading the file whole (except a .txt file that is one document).
Anything that is not UTF-8 text, or not the format its name says, raises DataError naming the file and place.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tnl.data.config import DataError

_COMPRESSIONS = (".gz", ".xz", ".bz2", ".zst")
_FORMATS = (".txt", ".text", ".md", ".jsonl", ".json", ".parquet")
_CHUNK = 1 << 20


def split_name(path: str) -> tuple[str, str]:
    """('.jsonl', '.xz') for 'a/b.jsonl.xz'; compression is '' when the file is plain."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    comp = suffixes.pop() if suffixes and suffixes[-1] in _COMPRESSIONS else ""
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in _FORMATS:
        raise DataError(f"{path}: unsupported file type {fmt or '(none)'!r}; use .txt, .jsonl or .parquet "
                        f"(optionally {', '.join(_COMPRESSIONS)} compressed)")
    if fmt == ".parquet" and comp:
        raise DataError(f"{path}: a parquet file compresses itself; give the plain .parquet file")
    return fmt, comp


def _open_binary(path: str, comp: str) -> IO[bytes]:
    if comp == ".gz":
        return gzip.open(path, "rb")
    if comp == ".xz":
        return lzma.open(path, "rb")
    if comp == ".bz2":
        return bz2.open(path, "rb")
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst needs the 'zstandard' package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def iter_documents(path: str, text_field: str = "text", doc_separator: str | None = None) -> Iterator[str]:
    """Yield the non-blank documents of one input file, in file order."""
    fmt, comp = split_name(path)
    try:
        if fmt == ".parquet":
            yield from _parquet_docs(path, text_field)
            return
        with _open_binary(path, comp) as f:
            if fmt in (".jsonl", ".json"):
                yield from _jsonl_docs(f, path, text_field)
            else:
                yield from _txt_docs(f, path, doc_separator)
    except DataError:
        raise
    except (OSError, EOFError, lzma.LZMAError) as e:  # corrupt or truncated compressed stream, unreadable file
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    except Exception as e:  # e.g. zstandard.ZstdError, pyarrow errors
        if type(e).__module__.split(".")[0] in ("zstandard", "pyarrow"):
            raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
        raise


def _check_text(text: str, path: str, where: str) -> None:
    if "\x00" in text:
        raise DataError(f"{path}: looks binary (NUL byte {where}); expected UTF-8 text")


def _txt_docs(f: IO[bytes], path: str, sep: str | None) -> Iterator[str]:
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    buf = ""
    parts: list[str] = []
    while True:
        raw = f.read(_CHUNK)
        try:
            text = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (bad byte at offset {offset + e.start})") from None
        _check_text(text, path, f"near byte offset {offset}")
        offset += len(raw)
        if sep is None:
            parts.append(text)
        else:
            buf += text
            *docs, buf = buf.split(sep)
            for d in docs:
                if d.strip():
                    yield d
        if not raw:
            break
    last = "".join(parts) if sep is None else buf
    if last.strip():
        yield last


def _jsonl_docs(f: IO[bytes], path: str, field: str) -> Iterator[str]:
    for lineno, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or field not in row:
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path}:{lineno}: no text field {field!r} (has: {keys}); set data.text_field")
        text = row[field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field {field!r} is {type(text).__name__}, expected a string")
        _check_text(text, path, f"on line {lineno}")
        if text.strip():
            yield text


def _parquet_docs(path: str, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    with open(path, "rb") as fh:
        if fh.read(4) != b"PAR1":
            raise DataError(f"{path}: not a parquet file")
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no text column {field!r} (has: {', '.join(names)}); set data.text_field")
    for batch in pf.iter_batches(batch_size=1024, columns=[field]):
        for i, text in enumerate(batch.column(0).to_pylist()):
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"{path}: column {field!r} holds {type(text).__name__}, expected strings")
            _check_text(text, path, f"in row ~{i}")
            if text.strip():
                yield text
