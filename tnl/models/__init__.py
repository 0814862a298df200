"""tnl.models: TransNormerLLM and the LLaMA baseline (training form), built from a flat model config mapping.

    model = build_model(cfg)                      # cfg: the resolved configs/model/<name>.yaml as a dict
    out = model(input_ids, targets, cu_seqlens)   # out.loss, out.logits
    model.flops_per_token(seq_len)                # training FLOPs per token, for MFU
    count_parameters(cfg)                         # on the meta device, nothing allocated
    compile_blocks(model, "inductor")             # torch.compile each block in place
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from tnl.models.common import LMOutput
from tnl.models.config import ModelArgs
from tnl.models.llama import LlamaLM
from tnl.models.tnl import TnlLM, alibi_slopes, tnl_layer_slopes

__all__ = ["LMOutput", "LlamaLM", "ModelArgs", "TnlLM", "alibi_slopes", "build_model", "compile_blocks",
           "count_parameters", "tnl_layer_slopes"]


def _args(cfg: Mapping | ModelArgs) -> ModelArgs:
    return cfg if isinstance(cfg, ModelArgs) else ModelArgs.from_mapping(cfg)


def build_model(cfg: Mapping | ModelArgs, device=None) -> nn.Module:
    """TnlLM or LlamaLM from a model config (`arch: tnl|llama` + HF-style sizes). device="meta" allocates nothing."""
    args = _args(cfg)
    cls = TnlLM if args.arch == "tnl" else LlamaLM
    if device is None:
        return cls(args)
    with torch.device(device):
        return cls(args)


def compile_blocks(model: nn.Module, backend: str = "inductor") -> None:
    """torch.compile each transformer block in place: parameter names (so checkpoints and exports) are unchanged,
    and the LA2 op stays outside the graphs (see tnl.models.tnl)."""
    for block in model.layers:
        block.compile(backend=backend)


def count_parameters(cfg: Mapping | ModelArgs) -> int:
    """Number of distinct parameters (tied embeddings counted once), computed on the meta device."""
    model = build_model(cfg, device="meta")
    return sum(p.numel() for p in model.parameters())
