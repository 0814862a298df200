"""tnl.hf: Hugging Face integration of TNL (TnlConfig, TnlForCausalLM, TnlCache) and export_pretrained.

Importing this package registers TnlConfig / TnlForCausalLM with AutoConfig / AutoModelForCausalLM (model_type "tnl").
"""

from tnl.hf.configuration_tnl import TnlConfig
from tnl.hf.export import export_pretrained
from tnl.hf.modeling_tnl import TnlCache, TnlForCausalLM

__all__ = ["TnlCache", "TnlConfig", "TnlForCausalLM", "export_pretrained", "register"]


def register() -> None:
    """Register the TNL classes with transformers' Auto factories (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        AutoConfig.register("tnl", TnlConfig, exist_ok=True)
        AutoModelForCausalLM.register(TnlConfig, TnlForCausalLM, exist_ok=True)
    except TypeError:  # pragma: no cover - transformers without exist_ok
        AutoConfig.register("tnl", TnlConfig)
        AutoModelForCausalLM.register(TnlConfig, TnlForCausalLM)


register()
