"""Self-contained modeling code for exported TNL checkpoints.

transformers' remote-code loader copies the modeling file and every file it imports relatively (`from .x import y`,
flat in the same folder) into its module cache. So we copy the modeling/config files, every tnl / tnl_kernels module
they need (found by following imports), and every kernels/*.py file, flattened to one folder with names like
`tnl_models_tnl.py` / `tnl_kernels_la2_fwd.py`, and rewrite each import of tnl / tnl_kernels into a relative one.
The result imports only torch, transformers and (for the Triton path) triton.
Data files of the kernels (e.g. the tuned block-size table la2_tuned.json) are embedded in the bundled module that
names them and written beside it on import, because the remote-code cache holds .py files only.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

OURS = ("tnl", "tnl_kernels")
ROOTS = ("tnl.hf.configuration_tnl", "tnl.hf.modeling_tnl")
TOP_NAMES = {"tnl.hf.configuration_tnl": "configuration_tnl", "tnl.hf.modeling_tnl": "modeling_tnl"}
_IMPORT_MODULE = re.compile(r"""import_module\(\s*(["'])((?:tnl|tnl_kernels)(?:\.\w+)*)\1\s*\)""")


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot locate the {top} package to bundle its sources")
    return Path(list(spec.submodule_search_locations)[0])


def _module_file(name: str) -> Path | None:
    """The source file of module `name` (tnl.x.y / tnl_kernels.x) without importing it, or None."""
    top, *rest = name.split(".")
    if top not in OURS:
        return None
    base = _package_dir(top).joinpath(*rest)
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def flat_name(name: str) -> str:
    return TOP_NAMES.get(name, name.replace(".", "_"))


def _is_package(name: str) -> bool:
    f = _module_file(name)
    return f is not None and f.name == "__init__.py"


def _absolute(module: str | None, level: int, current: str) -> str:
    if level == 0:
        return module or ""
    pkg = current if _is_package(current) else current.rpartition(".")[0]
    for _ in range(level - 1):
        pkg = pkg.rpartition(".")[0]
    return f"{pkg}.{module}" if module else pkg


def _rewrite(source: str, current: str) -> tuple[str, set[str]]:
    """Rewrite the imports of tnl / tnl_kernels in `source` (module `current`) to flat relative imports.

    Returns the new source and the set of our modules it needs."""
    needed: set[str] = set()
    edits: list[tuple[int, int, int, int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, current)
            if base.split(".")[0] not in OURS:
                continue
            stmts, plain = [], []
            for a in node.names:
                sub = f"{base}.{a.name}"
                if _module_file(sub) is not None:
                    needed.add(sub)
                    stmts.append(f"from . import {flat_name(sub)} as {a.asname or a.name}")
                else:
                    plain.append(a.name if a.asname is None else f"{a.name} as {a.asname}")
            if plain:
                if _module_file(base) is None:
                    raise ValueError(f"{current}: cannot bundle `from {base} import ...`: no such module")
                needed.add(base)
                stmts.insert(0, f"from .{flat_name(base)} import {', '.join(plain)}")
        elif isinstance(node, ast.Import):
            stmts = []
            for a in node.names:
                if a.name.split(".")[0] not in OURS:
                    stmts.append(f"import {a.name}" + (f" as {a.asname}" if a.asname else ""))
                    continue
                if a.asname is None and "." in a.name:
                    raise ValueError(f"{current}: cannot bundle `import {a.name}` (use `from ... import ...`)")
                needed.add(a.name)
                stmts.append(f"from . import {flat_name(a.name)} as {a.asname or a.name}")
            if all(not s.startswith("from . import") for s in stmts):
                continue
        else:
            continue
        edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, "; ".join(stmts)))
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def pos(lineno, col):  # ast columns are utf-8 byte offsets
        return offsets[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    for l0, c0, l1, c1, text in sorted(edits, reverse=True):
        source = source[:pos(l0, c0)] + text + source[pos(l1, c1):]

    def dynamic(match):  # importlib.import_module("tnl_kernels") -> relative to the bundle
        needed.add(match.group(2))
        return f'import_module(".{flat_name(match.group(2))}", __package__)'

    return _IMPORT_MODULE.sub(dynamic, source), needed


def _embed_data_files(source: str, data: dict[str, str]) -> str:
    """Prepend (after the docstring / __future__ imports) code writing `data` files beside the module if absent."""
    tree = ast.parse(source)
    body = tree.body
    i = 1 if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str) else 0
    while i < len(body) and isinstance(body[i], ast.ImportFrom) and body[i].module == "__future__":
        i += 1
    cut = body[i].lineno - 1 if i < len(body) else len(source.splitlines())
    snippet = (
        "# data files bundled by tnl.hf.bundle (the remote-code cache holds .py files only): written beside this\n"
        "# module on import if absent\n"
        "import pathlib as _tnl_pathlib\n\n"
        f"for _tnl_name, _tnl_text in {data!r}.items():\n"
        "    _tnl_path = _tnl_pathlib.Path(__file__).with_name(_tnl_name)\n"
        "    if not _tnl_path.exists():\n"
        "        try:\n"
        "            _tnl_path.write_text(_tnl_text)\n"
        "        except OSError:\n"
        "            pass\n\n")
    lines = source.splitlines(keepends=True)
    return "".join(lines[:cut]) + snippet + "".join(lines[cut:])


def kernel_data_files() -> dict[str, str]:
    """{name: text} of the non-Python files beside the kernels (tuned tables), small text files only."""
    out = {}
    for f in sorted(_package_dir("tnl_kernels").iterdir()):
        if f.is_file() and f.suffix in (".json", ".txt", ".csv") and f.stat().st_size < (1 << 20):
            out[f.name] = f.read_text(encoding="utf-8")
    return out


def bundle_sources() -> dict[str, str]:
    """{file name: source} of the self-contained modeling code (flat, relative imports only)."""
    queue = list(ROOTS)
    kernels_dir = _package_dir("tnl_kernels")
    queue += ["tnl_kernels"] + [f"tnl_kernels.{'.'.join(p.relative_to(kernels_dir).with_suffix('').parts)}"
                                for p in sorted(kernels_dir.rglob("*.py")) if p.name != "__init__.py"]
    data = kernel_data_files()
    out: dict[str, str] = {}
    done: set[str] = set()
    while queue:
        name = queue.pop()
        if name in done:
            continue
        done.add(name)
        path = _module_file(name)
        if path is None:
            raise ValueError(f"cannot bundle module {name}: source not found")
        source, needed = _rewrite(path.read_text(encoding="utf-8"), name)
        used = {k: v for k, v in data.items() if k in source}
        out[flat_name(name) + ".py"] = _embed_data_files(source, used) if used else source
        queue += sorted(needed - done)
    manifest = "\n".join(f"    from .{Path(f).stem} import __doc__ as _  # noqa" for f in sorted(out)
                         if f != "modeling_tnl.py")
    out["modeling_tnl.py"] += (
        "\n\nif False:  # every bundled module, listed so that transformers' remote-code loader copies them all\n"
        + manifest + "\n")
    leftovers = [f for f, s in out.items() if re.search(r"^\s*(from|import)\s+(tnl|tnl_kernels)\b", s, re.M)]
    if leftovers:
        raise ValueError(f"absolute tnl imports left in bundled files {leftovers}")
    return out
