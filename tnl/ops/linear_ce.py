"""The arithmetic of the fused linear + cross-entropy (see tnl.ops.loss): the chunked forward that computes the
gradients, the dtype they wait in, and their scaling in backward. Shared by the autograd Function (tnl.ops.loss)
and the torch.compile custom op (tnl.ops.custom_ops), so neither imports the other.
"""

from __future__ import annotations

import functools

import torch

from tnl.ops import triton_backend

IGNORE_INDEX = -100  # the target that marks a token without a loss (torch's and transformers' convention)


def ce_kernel(device):
    """tnl_kernels.ce_grad_inplace for tensors on `device`, with this module's IGNORE_INDEX."""
    return functools.partial(triton_backend.triton_fn("ce_grad_inplace", device), ignore_index=IGNORE_INDEX)


_mm_out_dtype_ok: dict[str, bool] = {}  # device type -> torch.addmm(..., out_dtype=float32) works for bf16/fp16


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc (fp32) + a @ b, the product accumulated in fp32 (cuBLAS with an fp32 output where torch offers it, else
    rounded to a's dtype once per chunk before the fp32 sum). Returns the new accumulator (maybe acc itself)."""
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    dev = a.device.type
    if _mm_out_dtype_ok.get(dev, dev == "cuda"):
        try:
            return torch.addmm(acc, a, b, out_dtype=acc.dtype)
        except (TypeError, RuntimeError, NotImplementedError):  # older torch, or a backend without it
            _mm_out_dtype_ok[dev] = False
    return acc.add_(a @ b)


def kept_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a saved gradient waits in until backward: fp16 ones in fp32, because they are still divided by the
    token count and multiplied by the incoming gradient (an fp16 loss scale) only then, and 1/count-sized values
    would underflow fp16; bf16 has fp32's range."""
    return torch.float32 if dtype == torch.float16 else dtype


def fused_forward(hidden, weight, targets, chunk_size, cdtype, kernel, need_h, need_w):
    """(loss, dloss/dhidden or None, dloss/dweight or None), all computed here, chunk by chunk (module docstring).
    kernel: `ce_kernel(device)`. Shared by the autograd Function and the custom op (tnl.ops.custom_ops)."""
    N, D = hidden.shape
    V = weight.shape[0]
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(cdtype)
        count = (targets != IGNORE_INDEX).sum()
        inv = 1.0 / count.clamp(min=1).to(torch.float32)  # device scalar: no host sync
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dh = torch.empty(N, D, dtype=kept_dtype(hidden.dtype), device=hidden.device) if need_h else None
        dw = torch.zeros(V, D, dtype=torch.float32, device=hidden.device) if need_w else None
        for s in range(0, N, chunk_size):
            hc = hidden[s:s + chunk_size].to(cdtype)
            logits = hc @ w.T  # (rows, V), contiguous
            total = total + kernel(logits, targets[s:s + chunk_size], 1.0).sum()
            dlogits = logits  # overwritten in place: softmax - onehot (unscaled: fp16 keeps its precision)
            if need_h:
                if dh.dtype == cdtype:
                    torch.mm(dlogits, w, out=dh[s:s + chunk_size])
                else:
                    dh[s:s + chunk_size] = dlogits @ w
            if need_w:
                dw = _accumulate_mm(dw, dlogits.T, hc)
            del logits, dlogits
        loss = total * inv
        if need_h:
            dh.mul_(inv)
        if need_w:
            dw = dw.mul_(inv).to(kept_dtype(weight.dtype))
    return loss, dh, dw


def scale_saved_grads(dh, dw, grad_loss, dtypes):
    """The backward of the fused loss: the kept gradients times the incoming scalar, in the inputs' dtypes."""
    g = grad_loss.to(torch.float32)  # multiplied in fp32: a bf16 tensor times a 0-d one would round g to bf16
    gh = None if dh is None else (dh.to(torch.float32) * g).to(dtypes[0])
    gw = None if dw is None else (dw.to(torch.float32) * g).to(dtypes[1])
    return gh, gw
