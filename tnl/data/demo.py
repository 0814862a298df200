"""The embedded demo corpus: English text built from the documentation that ships with the running Python.

Nothing is downloaded and no third-party text is committed. Two sources, walked in a fixed order:
- `pydoc_data.topics` (the language reference topics that `help()` shows), one document per topic;
- the standard library's docstrings (module, public classes, functions and methods), one document per module.
The stdlib sources are parsed with `ast` and never imported, so no module's import side effects run and a module
that would fail to import on this platform costs nothing. The result is deterministic for a given Python
installation (same version, same stdlib files): its size and sha256 go into the data manifest.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

BUILDER_VERSION = 1
# Folders of the stdlib that hold tests, bundled wheels or third-party packages rather than library docs.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "_bundled", "__phello__"}


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_files(root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of every stdlib .py file outside the skipped folders, sorted by name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("test_"):
                continue
            parts = [*rel.parts, fn[:-3]]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts:
                out.append((".".join(parts), Path(dirpath) / fn))
    return sorted(out)


def _entries(body: list[ast.stmt], prefix: str) -> Iterator[str]:
    """'name(args)' + docstring for each public class/function with a docstring, in source order."""
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        name = prefix + node.name
        doc = ast.get_docstring(node, clean=True)
        if isinstance(node, ast.ClassDef):
            if doc:
                yield f"class {name}\n\n{doc}"
            yield from _entries(node.body, name + ".")
        elif doc:
            try:
                args = ast.unparse(node.args)
            except (ValueError, TypeError, RecursionError):  # pragma: no cover - defensive
                args = "..."
            yield f"{name}({args})\n\n{doc}"


def _module_document(name: str, path: Path) -> str | None:
    try:
        source = path.read_bytes().decode("utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(source, filename=str(path))
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, OSError):
        return None
    parts = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        parts.append(doc)
    parts.extend(_entries(tree.body, ""))
    if not parts:
        return None
    return f"Module {name}\n\n" + "\n\n".join(parts)


def iter_python_docs() -> Iterator[tuple[str, str]]:
    """Yield (source, text) documents: pydoc topics first, then one document per stdlib module."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    for key in sorted(topics):
        text = inspect.cleandoc(topics[key]).strip()
        if text:
            yield f"topic:{key}", text
    for name, path in _module_files(_stdlib_dir()):
        text = _module_document(name, path)
        if text:
            yield f"module:{name}", text


def python_docs_id() -> str:
    """What the corpus depends on: builder version + the exact Python build (part of the data fingerprint)."""
    return f"python_docs/v{BUILDER_VERSION}/{sys.version}/{sys.implementation.cache_tag}"


def build_python_docs(path: str | os.PathLike) -> dict:
    """Write the demo corpus as JSON lines ({"source", "text"}) to `path` atomically; return its description
    {"path", "bytes", "sha256", "documents", "text_bytes", "python"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    n_docs = n_bytes = text_bytes = 0
    try:
        with open(tmp, "wb") as f:
            for source, text in iter_python_docs():
                line = (json.dumps({"source": source, "text": text}, ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                h.update(line)
                n_docs += 1
                n_bytes += len(line)
                text_bytes += len(text.encode("utf-8"))
        if n_docs == 0:
            raise ValueError("the demo corpus is empty: this Python ships neither pydoc_data nor stdlib sources")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(path),
        "bytes": n_bytes,
        "sha256": h.hexdigest(),
        "documents": n_docs,
        "text_bytes": text_bytes,
        "python": python_docs_id(),
    }
