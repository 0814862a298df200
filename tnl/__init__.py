"""tnl: pretraining TransNormerLLM on Lightning Attention-2, with a LLaMA baseline trained by the same code."""

__version__ = "0.1.0"


def _register_hf() -> None:
    """Register TnlConfig / TnlForCausalLM with transformers' Auto classes (skipped if transformers is missing)."""
    try:
        import transformers  # noqa: F401
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    import tnl.hf  # noqa: F401  (registers on import)


_register_hf()
