"""SRMSNorm (DESIGN.md): y = x * rsqrt(mean(x^2, -1) + eps), no weight, fp32 inside."""

import torch

from tnl import reference
from tnl.ops import settings, triton_backend
from tnl.ops.validate import DTYPES, tensor

__all__ = ["srms_norm"]


def srms_norm(x, eps=1e-6):
    """Simple RMSNorm without weight: y = x * rsqrt(mean(x^2, -1) + eps), float32 inside, returned in x's dtype.

    Triton on CUDA (`tnl_kernels.srms_norm_triton`), torch on CPU, unless the backend setting names one.
    Differentiable.
    Under torch.compile the plain formula, for inductor to fuse with its neighbours (see tnl.ops.custom_ops)."""
    tensor(x, "x")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if torch.compiler.is_compiling():  # the formula: inductor fuses it with the adds, gates and casts around it
        return reference.srms_norm(x, eps)
    if settings.backend(x.device) == "triton":
        return triton_backend.triton_fn("srms_norm_triton", x.device)(x, float(eps))
    if torch.is_grad_enabled() and x.requires_grad:
        return _SRMSNormTorch.apply(x, float(eps))
    return reference.srms_norm(x, eps)


class _SRMSNormTorch(torch.autograd.Function):
    """SRMSNorm in torch with the Triton kernel's memory policy: keeps the output and 1/rms, not the input
    (dx = r (dy - y mean(dy y)), x = y / r), so a norm whose output the next layer keeps anyway adds no activations."""

    @staticmethod
    def forward(ctx, x, eps):
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(dt)
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        y = (xf * r).to(x.dtype)
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, r = ctx.saved_tensors
        yf, dyf = y.to(r.dtype), dy.to(r.dtype)
        return (r * (dyf - yf * (dyf * yf).mean(-1, keepdim=True))).to(y.dtype), None
