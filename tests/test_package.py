"""The foundation: the distribution installs `tnl` and `tnl_kernels` under their own names, and nothing in the checkout
answers to `import kernels` (PyPI's `kernels` package, which transformers >= 5.25 imports), from any directory."""

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_tnl_and_kernels_import():
    import tnl
    import tnl_kernels

    assert tnl.__version__
    assert pathlib.Path(tnl_kernels.__file__).resolve().parent == ROOT / "kernels" / "tnl_kernels"


def test_kernels_folder_is_not_a_package():
    """A regular package at kernels/ would win over the installed `kernels` wherever the repo root is on sys.path."""
    assert not (ROOT / "kernels" / "__init__.py").exists()


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_repo_root_does_not_shadow_pypi_kernels(tmp_path, how):
    """From the repository root (`python -c`, `python -` / the REPL put it first on sys.path): `import kernels` is the
    installed package (or, where none is installed, nothing of ours), transformers' hub-kernels integration imports,
    and an exported TNL loads through AutoModelForCausalLM in both ways a user would load it."""
    import torch

    from tnl.hf import export_pretrained
    from tnl.models import build_model

    torch.manual_seed(0)
    core = build_model(dict(arch="tnl", vocab_size=37, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=24)).eval()
    out = export_pretrained(core, tmp_path / "hf")
    ids = torch.randint(0, 37, (1, 7))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": core(ids).logits}, tmp_path / "io.pt")
    installed = importlib.util.find_spec("kernels") is not None and _has_dist("kernels")
    code = textwrap.dedent(f"""
        import sys, pathlib
        root = pathlib.Path({str(ROOT)!r})
        assert sys.path[0] in ("", str(root)), sys.path[:2]
        import kernels
        where = getattr(kernels, "__file__", None)
        assert where is None or root / "kernels" not in pathlib.Path(where).resolve().parents, where
        assert hasattr(kernels, "__version__") == {installed!r}, where
        if {installed!r}:
            import transformers.integrations.hub_kernels  # imports kernels' names (CUDAProperties, ...)
        import torch, tnl
        from transformers import AutoModelForCausalLM
        io = torch.load({str(tmp_path / "io.pt")!r})
        for remote in (False, True):
            m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=remote).eval()
            with torch.no_grad():
                assert torch.equal(m(io["ids"]).logits, io["logits"]), remote
        print("ROOT-OK")
    """)
    if how == "-c":
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    else:
        run = subprocess.run([sys.executable, "-"], input=code, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ROOT-OK" in run.stdout, run.stderr[-3000:]


def _has_dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject lists packages by hand (because of the kernels/tnl_kernels mapping): none may be forgotten."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tnl").rglob("__init__.py")}
    found |= {".".join(p.parent.relative_to(ROOT / "kernels").parts) for p in (ROOT / "kernels").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_no_deprecated_torch_distributed_calls():
    """tnl calls none of the torch.distributed functions the installed torch marks deprecated (PEP 702's
    __deprecated__, e.g. all_gather_into_tensor / reduce_scatter_tensor on torch >= 2.13)."""
    import re

    import torch.distributed as dist

    deprecated = [n for n in dir(dist) if getattr(getattr(dist, n, None), "__deprecated__", None)]
    pattern = re.compile(r"\b(?:dist|distributed)\.(" + "|".join(map(re.escape, deprecated)) + r")\s*\(")
    hits = [f"{p.relative_to(ROOT)}: {m.group(1)}" for p in (ROOT / "tnl").rglob("*.py")
            for m in pattern.finditer(p.read_text(encoding="utf-8"))] if deprecated else []
    assert not hits, hits


def test_generate_and_cached_forward_log_no_deprecation(caplog):
    """transformers renames the cache keyword (past_key_values -> cache) and logs a deprecation when given the old
    one: our generation path must pass only the name the installed release uses."""
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    from tnl.hf import TnlForCausalLM
    from tnl.hf.export import tnl_config_from_args
    from tnl.models import build_model

    torch.manual_seed(0)
    core = build_model(dict(arch="tnl", vocab_size=37, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=24))
    hf = TnlForCausalLM(tnl_config_from_args(core.args)).eval()
    ids = torch.randint(1, 37, (2, 5))
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            for kw in ({"do_sample": False}, {"do_sample": True, "top_k": 5}, {"num_beams": 2}):
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, pad_token_id=0,
                                  eos_token_id=None, **kw)
                assert out.shape == (2, 8)
    finally:
        hf_logging.disable_propagation()
    assert not [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
