"""Triton kernels for tnl (imported as `tnl_kernels`): Lightning Attention-2, SRMSNorm and the cross-entropy gradient
of the fused LM-head loss. No model code here.

Importing this package imports triton and decorates the kernels: set TRITON_INTERPRET=1 before the first import to
run them on CPU tensors through Triton's interpreter.
"""

from .fused_ce import ce_grad_inplace
from .la2_functional import lightning_attn_backward, lightning_attn_forward
from .lightning_attn import lightning_attn_triton
from .srms_norm import srms_norm_triton

__all__ = ["ce_grad_inplace", "lightning_attn_backward", "lightning_attn_forward", "lightning_attn_triton",
           "srms_norm_triton"]
