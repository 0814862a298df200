"""tnl.hf: Hugging Face integration of TNL (TnlConfig, TnlForCausalLM, TnlCache) and export_pretrained.

Importing this package registers TnlConfig / TnlForCausalLM with AutoConfig / AutoModelForCausalLM (model_type "tnl"),
and the bundler of the self-contained modeling code with TnlConfig.save_pretrained (so every save_pretrained writes a
folder that loads with trust_remote_code where tnl is not installed).
"""

from tnl.hf import configuration_tnl
from tnl.hf.bundle import bundle_sources
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
    configuration_tnl.set_bundle_sources(bundle_sources)


register()
