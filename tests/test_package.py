"""The foundation: the distribution installs both packages under their own names and leaves `kernels` alone."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tnl_and_kernels_import():
    import tnl
    import tnl_kernels

    assert tnl.__version__
    assert pathlib.Path(tnl_kernels.__file__).resolve().parent == ROOT / "kernels"


def test_kernels_name_is_not_taken():
    """transformers probes for PyPI's `kernels` package; our folder must not answer to that name."""
    code = (
        "import importlib.util, tnl, tnl_kernels\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "assert importlib.util.find_spec('kernels') is None or 'tnl' not in str(importlib.util.find_spec('kernels'))\n"
        "print(is_kernels_available())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject lists packages by hand (because of the kernels/ -> tnl_kernels mapping): none may be forgotten."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"tnl_kernels"} | {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tnl").rglob("__init__.py")
    }
    found |= {"tnl_kernels." + ".".join(p.parent.relative_to(ROOT / "kernels").parts)
              for p in (ROOT / "kernels").rglob("__init__.py") if p.parent != ROOT / "kernels"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
