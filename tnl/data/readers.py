"""Streaming document readers: .txt, .jsonl, .parquet, plain or .gz/.xz/.bz2/.zst compressed.

Each reader yields one str per document without loading the file whole (except a .txt file that is one document).
Anything that is not UTF-8 text, or not the format its name says, raises DataError naming the file and place.

Where a .txt file's documents end (TXT_SPLITS; data.doc_separator, when set, takes precedence):
  file        the whole file is one document
  paragraphs  every blank line (a run of empty or whitespace-only lines) ends a document
  chunks      documents of about chunk_chars characters: each ends at the first blank line at or after chunk_chars
              characters; where none comes before 2 * chunk_chars, at the last line break before that (or exactly
              there when the stretch has no line break)
paragraphs and chunks keep the text exactly (a blank line stays with the document it ends): the documents concatenate
back to the file, except documents that are only whitespace, which are skipped as everywhere.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from tnl.data.config import DataError

_COMPRESSIONS = (".gz", ".xz", ".bz2", ".zst")
_FORMATS = (".txt", ".text", ".md", ".jsonl", ".json", ".parquet")
_CHUNK = 1 << 20
TXT_SPLITS = ("chunks", "paragraphs", "file")
_BREAK = re.compile(r"\n[^\S\n]*\n(?:[^\S\n]*\n)*")  # a line break followed by one or more blank lines
_SETTLED = re.compile(r"[^\S\n]*\S")  # after a break: more text on the line, so the break cannot grow


def txt_rule(txt_split: str, chunk_chars: int, doc_separator: str | None = None) -> str:
    """The document boundary rule of .txt inputs in words (recorded in the manifest)."""
    if doc_separator is not None:
        return f"a document ends at each {doc_separator!r} (data.doc_separator), which is dropped"
    if txt_split == "file":
        return "a .txt file is one document"
    if txt_split == "paragraphs":
        return "every blank line ends a document (paragraphs; the blank lines stay with the paragraph they end)"
    return (f"documents of about {chunk_chars} characters: each ends at the first blank line at or after "
            f"{chunk_chars} characters, else at the last line break before {2 * chunk_chars}, else at exactly "
            f"{2 * chunk_chars}; the documents concatenate back to the file")


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


def iter_documents(path: str, text_field: str = "text", doc_separator: str | None = None, txt_split: str = "file",
                   chunk_chars: int = 4096) -> Iterator[str]:
    """Yield the non-blank documents of one input file, in file order (txt_split / chunk_chars: see the module
    docstring; they apply to .txt files without doc_separator)."""
    fmt, comp = split_name(path)
    try:
        if fmt == ".parquet":
            yield from _parquet_docs(path, text_field)
            return
        with _open_binary(path, comp) as f:
            if fmt in (".jsonl", ".json"):
                yield from _jsonl_docs(f, path, text_field)
            elif doc_separator is None and txt_split != "file":
                limit = 2 * chunk_chars if txt_split == "chunks" else None
                pieces = _txt_pieces(f, path)
                yield from (d for d in split_text(pieces, chunk_chars if limit else 1, limit) if d.strip())
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


def _txt_pieces(f: IO[bytes], path: str) -> Iterator[str]:
    """The text of a UTF-8 file in pieces of about _CHUNK bytes, checked as _txt_docs checks it."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    while True:
        raw = f.read(_CHUNK)
        try:
            text = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (bad byte at offset {offset + e.start})") from None
        _check_text(text, path, f"near byte offset {offset}")
        offset += len(raw)
        if text:
            yield text
        if not raw:
            return


def _doc_end(buf: str, at: int, lo: int, hi: int | None, final: bool) -> int | None:
    """Where the document starting at buf[at] ends (the paragraphs / chunks rules), or None: read more first."""
    m = _BREAK.search(buf, at + max(lo - 1, 0))
    while m is not None and m.end() - at < lo:  # a break must end at or after lo characters
        m = _BREAK.search(buf, m.end())
    if m is not None and (hi is None or m.start() - at < hi):
        if final or _SETTLED.match(buf, m.end()):
            return m.end()
        return None  # the break may grow with the next piece
    if hi is None or len(buf) - at < hi:
        return None  # no break yet: wait for more (at the end of the text, the rest is one document)
    last = buf.rfind("\n")
    if not final and at <= last < at + hi and (last + 1 == len(buf) or buf[last + 1:].isspace()):
        return None  # a break starting before hi may still come (the text so far ends in a line break and spaces)
    nl = buf.rfind("\n", at, at + hi)
    return nl + 1 if nl >= 0 else at + hi


def split_text(pieces: Iterable[str], lo: int, hi: int | None) -> Iterator[str]:
    """Documents of a text given in pieces: each ends at the first blank line ending at or after `lo` characters;
    with `hi`, where none starts before `hi` characters, at the last line break before it (else at `hi`). The result
    does not depend on how the text is cut into pieces, and its concatenation is the text."""
    buf = ""
    for piece in pieces:
        buf += piece
        at = 0
        while (end := _doc_end(buf, at, lo, hi, final=False)) is not None:
            yield buf[at:end]
            at = end
        buf = buf[at:]
    at = 0
    while at < len(buf):
        end = _doc_end(buf, at, lo, hi, final=True) or len(buf)
        yield buf[at:end]
        at = end


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
