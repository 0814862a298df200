"""tnl: pretraining TransNormerLLM on Lightning Attention-2, with a LLaMA baseline trained by the same code."""

__version__ = "0.1.0"
