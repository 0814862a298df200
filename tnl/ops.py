"""The public op facade (DESIGN.md, Contract 1): Lightning Attention-2 and SRMSNorm.

Every call validates its arguments in Python (one ValueError/TypeError naming the argument), then picks a backend:
Triton (`tnl_kernels`) on CUDA tensors, the chunked pure-torch path of `tnl.reference` on CPU. The environment variable
TNL_KERNEL_BACKEND=triton|torch forces one; it is read on every call, nothing is fixed at import.

Triton on CPU tensors means Triton's interpreter, which Triton chooses when a function is decorated: when `triton`
itself is imported (its standard library, tl.sum, tl.cdiv, ...) and when the `tnl_kernels` modules are. This module
imports `tnl_kernels` lazily and sets TRITON_INTERPRET=1 first when the tensors are on CPU, which works as long as
nothing imported triton before in this process. A process that already imported triton compiled (TRITON_INTERPRET
unset) cannot interpret afterwards: that raises a RuntimeError telling you to set TRITON_INTERPRET=1 before anything
imports triton (the reverse, interpreted kernels called on CUDA tensors, raises too).
"""

import importlib
import os
import sys
import weakref

import torch

from tnl import custom_ops, reference

__all__ = ["lightning_attn", "lightning_attn_step", "srms_norm"]

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_MAX_DIM = 256
_BACKENDS = ("triton", "torch")


# ----------------------------------------------------------------------------------------------------- backend choice
def _backend(device):
    """'triton' or 'torch' for tensors on `device`: TNL_KERNEL_BACKEND when set, else Triton exactly on CUDA."""
    forced = os.environ.get("TNL_KERNEL_BACKEND", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            got = os.environ["TNL_KERNEL_BACKEND"]
            raise ValueError(f"TNL_KERNEL_BACKEND must be one of {', '.join(_BACKENDS)} (or unset), got {got!r}")
        return forced
    return "triton" if device.type == "cuda" else "torch"


def _kernel_modes():
    """'interpreted' / 'compiled' for the Triton functions already defined in this process: triton's own standard
    library (decorated when triton is imported) and every loaded tnl_kernels module. Imports nothing."""
    jit, interp = sys.modules.get("triton.runtime.jit"), sys.modules.get("triton.runtime.interpreter")
    if jit is None:
        return set()  # triton not imported yet: whatever comes next follows TRITON_INTERPRET
    kinds = (jit.JITFunction,) + ((interp.InterpretedFunction,) if interp is not None else ())
    modes = set()
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "triton.language.standard" or name.partition(".")[0] == "tnl_kernels"):
            continue
        for obj in list(vars(mod).values()):
            for _ in range(8):  # unwrap autotune / heuristics wrappers (.fn) down to the decorated function
                if obj is None or isinstance(obj, kinds):
                    break
                obj = getattr(obj, "fn", None)
            if isinstance(obj, jit.JITFunction):
                modes.add("compiled")
            elif obj is not None and isinstance(obj, kinds):
                modes.add("interpreted")
    return modes


_mode_ok: set[str] = set()  # device types whose Triton mode was verified (modes of defined functions never change)


def _triton_fn(name, device):
    """tnl_kernels.<name>, imported lazily; on CPU tensors under Triton's interpreter (see module docstring)."""
    if device.type not in _mode_ok:
        _check_triton_mode(device)
    kernels = importlib.import_module("tnl_kernels")
    fn = getattr(kernels, name, None)
    if fn is None:
        raise RuntimeError(f"tnl_kernels has no {name}: no Triton backend; use TNL_KERNEL_BACKEND=torch")
    _mode_ok.add(device.type)
    return fn


def _check_triton_mode(device):
    if device.type == "cpu":
        if "compiled" in _kernel_modes():
            raise RuntimeError(
                "the Triton backend was asked for CPU tensors, but triton (or tnl_kernels) was already imported in "
                "compiled mode in this process; set TRITON_INTERPRET=1 in the environment before anything imports "
                "triton, or use TNL_KERNEL_BACKEND=torch"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    elif device.type == "cuda":
        if "interpreted" in _kernel_modes():
            raise RuntimeError(
                "CUDA tensors reached Triton kernels defined under Triton's interpreter (TRITON_INTERPRET=1 was set "
                "when triton or tnl_kernels was imported); unset TRITON_INTERPRET to run compiled kernels"
            )
    else:
        raise ValueError(f"the Triton backend supports CUDA and CPU tensors, got device {device}")


# --------------------------------------------------------------------------------------------------------- validation
def _tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _check_slope(slope, H, device):
    if slope is None:
        return
    _tensor(slope, "slope")
    if slope.dtype != torch.float32:
        raise TypeError(f"slope must be float32 (keep the decay buffer in float32), got {slope.dtype}")
    if tuple(slope.shape) != (H,):
        raise ValueError(f"slope must have shape (H,) = ({H},), got {tuple(slope.shape)}")
    if slope.device != device:
        raise ValueError(f"slope is on {slope.device} but q is on {device}")
    if not _needs_value_check(slope, None):
        return
    if not bool((torch.isfinite(slope) & (slope >= 0)).all()):  # one device sync
        if not bool(torch.isfinite(slope).all()):
            raise ValueError("slope must be finite, got non-finite values")
        raise ValueError(f"slope must be >= 0 (decay exp(-slope) <= 1), got minimum {slope.min().item():g}")
    _remember_checked(slope, None)


# Value checks (slope >= 0, cu_seqlens boundaries) read the tensor on the host: a device sync. A model passes the same
# slope tensor on every call and the same cu_seqlens to every layer of a step, so a passed check is remembered per
# tensor object and its in-place version counter (weakly: forgotten when the tensor dies).
_checked: dict[int, tuple] = {}


def _needs_value_check(x, context):
    if torch.compiler.is_compiling():
        return False  # tracing: values unknown
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return False  # a sync would break the CUDA graph capture
    if x.is_inference():
        return True  # inference tensors have no version counter: check every time
    entry = _checked.get(id(x))
    return not (entry is not None and entry[0]() is x and entry[1:] == (x._version, context))


def _remember_checked(x, context):
    if x.is_inference():
        return
    key = id(x)
    _checked[key] = (weakref.ref(x, lambda _, key=key: _checked.pop(key, None)), x._version, context)


def _check_cu_seqlens(cu_seqlens, B, T, device):
    """Validates cu_seqlens; returns N, the number of sequences."""
    if cu_seqlens is None:
        return B
    _tensor(cu_seqlens, "cu_seqlens")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape (N+1,) with N >= 1, got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
    if B != 1:
        raise ValueError(f"cu_seqlens requires batch size 1 (documents packed along T), got B = {B}")
    if _needs_value_check(cu_seqlens, T):
        cu = cu_seqlens.tolist()
        if cu[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {cu[0]}")
        if cu[-1] != T:
            raise ValueError(f"cu_seqlens must end at T = {T}, got {cu[-1]}")
        if any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError("cu_seqlens must be non-decreasing")
        _remember_checked(cu_seqlens, T)
    return cu_seqlens.shape[0] - 1


def _check_state(state, name, shape, device):
    if state is None:
        return
    _tensor(state, name)
    if state.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {state.dtype}")
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must have shape (N, H, D, E) = {shape}, got {tuple(state.shape)}")
    if state.device != device:
        raise ValueError(f"{name} is on {state.device} but q is on {device}")


def _check_qkv(q, k, v, layout):
    """Common checks of q, k (..., H, D) and v (..., H, E); `layout` names the expected dims, e.g. '(B, T, H, D)'."""
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        _tensor(x, name)
    ndim = layout.count(",") + 1
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.dim() != ndim:
            shape = layout if name != "v" else layout.replace("D)", "E)")
            raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {tuple(x.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be bfloat16, float16 or float32, got {q.dtype}")
    for x, name in ((k, "k"), (v, "v")):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k must have q's shape {layout} = {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape[:-1]) != tuple(q.shape[:-1]):
        raise ValueError(f"v must match q on {layout[:-3]}) = {tuple(q.shape[:-1])}, got {tuple(v.shape[:-1])}")
    for x, name in ((q, "q"), (v, "v")):
        if not 1 <= x.shape[-1] <= _MAX_DIM:
            raise ValueError(f"{name}'s head dim must be in 1..{_MAX_DIM}, got {x.shape[-1]}")
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.shape[-1] > 1 and x.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride on its last dim, got strides {x.stride()}")
    if any(s == 0 for s in q.shape[:-1]):
        raise ValueError(f"q must not have an empty dimension, got shape {tuple(q.shape)}")


# ------------------------------------------------------------------------------------------------------------ the ops
def lightning_attn(q, k, v, slope=None, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    r"""Causal linear attention with per-head exponential decay (Lightning Attention-2).

    o_t = q_t S_t,  S_t = lam S_{t-1} + k_t^T v_t,  lam_h = exp(-slope_h).  No softmax, no 1/sqrt(D) scale, no
    normaliser: scale or normalise q, k and o yourself.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, D]`, bfloat16, float16 or float32; any strides with unit stride on
            the last dim (e.g. a slice of a fused projection).
        k (torch.Tensor): keys of shape `[B, T, H, D]`, q's dtype and device.
        v (torch.Tensor): values of shape `[B, T, H, E]`, q's dtype and device. D and E may differ, both <= 256.
        slope (Optional[torch.Tensor]): per-head decay rates of shape `[H]`, float32, finite, >= 0. Default: `None`,
            no decay (lam = 1). Not differentiated.
        initial_state (Optional[torch.Tensor]): the true state S before each sequence, shape `[N, H, D, E]`, float32.
            N = B, or the number of sequences when `cu_seqlens` is given. Default: `None` (zeros). Differentiable.
        output_final_state (bool): also return each sequence's state after its last token. Default: `False`.
        cu_seqlens (Optional[torch.Tensor]): int32 cumulative sequence lengths of shape `[N+1]` (0, ..., T) for
            documents packed along T with B = 1 (FlashAttention's varlen convention). The state resets at every
            boundary: no attention across documents. Default: `None`.

    Returns:
        o (torch.Tensor): outputs of shape `[B, T, H, E]` in q's dtype.
        final_state (Optional[torch.Tensor]): `[N, H, D, E]` float32 when `output_final_state`, else `None`.

    The state is the TRUE state S_t = sum_s lam^(t-s) k_s^T v_s (+ lam^(t+1) S_0), so `final_state` of one call is the
    `initial_state` of the next, and `lightning_attn_step` continues it token by token. Gradients flow to q, k, v and
    `initial_state`. Backend: Triton on CUDA, pure torch on CPU; TNL_KERNEL_BACKEND=triton|torch forces one.
    Under torch.compile the call is one custom op of the graph (tnl.custom_ops), forward and backward.

    Examples::
        >>> import torch
        >>> from tnl.ops import lightning_attn
        >>> B, T, H, D, E = 2, 1024, 4, 64, 64
        >>> q, k = (torch.randn(B, T, H, D) for _ in range(2))
        >>> v = torch.randn(B, T, H, E)
        >>> slope = torch.rand(H)
        >>> h0 = torch.randn(B, H, D, E)
        >>> o, ht = lightning_attn(q, k, v, slope, initial_state=h0, output_final_state=True)
        >>> # varlen: the same B sequences packed into one row, delimited by cu_seqlens
        >>> q, k, v = (x.reshape(1, B * T, H, -1) for x in (q, k, v))
        >>> cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32)
        >>> o_var, ht_var = lightning_attn(q, k, v, slope, initial_state=h0, output_final_state=True,
        ...                                cu_seqlens=cu_seqlens)
        >>> assert torch.allclose(o.reshape(1, B * T, H, E), o_var, atol=1e-3, rtol=1e-3)
    """
    _check_qkv(q, k, v, "(B, T, H, D)")
    B, T, H, D = q.shape
    E = v.shape[-1]
    _check_slope(slope, H, q.device)
    N = _check_cu_seqlens(cu_seqlens, B, T, q.device)
    _check_state(initial_state, "initial_state", (N, H, D, E), q.device)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")

    if torch.compiler.is_compiling():  # one opaque node of the graph, backend chosen when it runs
        return custom_ops.lightning_attn(q, k, v, slope, initial_state, output_final_state, cu_seqlens)
    if _backend(q.device) == "triton":
        fn = _triton_fn("lightning_attn_triton", q.device)
        if slope is not None:
            slope = slope.contiguous()
        o, final = fn(q, k, v, slope, initial_state, output_final_state, cu_seqlens)
        return o, (final if output_final_state else None)
    o, final = reference.lightning_attn_chunked(q, k, v, slope, initial_state, cu_seqlens)
    return o, (final if output_final_state else None)


def lightning_attn_step(q, k, v, slope, state):
    """One decoding step of `lightning_attn` for a single token per sequence (the O(1) generate path).

    Args:
        q, k (torch.Tensor): `[B, H, D]`; v (torch.Tensor): `[B, H, E]`; one dtype among bf16/fp16/fp32.
        slope (Optional[torch.Tensor]): `[H]` float32 >= 0, or `None` for no decay.
        state (Optional[torch.Tensor]): the true state `[B, H, D, E]` float32 after the previous token (e.g. a
            `final_state` of `lightning_attn`), or `None` for zeros.

    Returns:
        (o, state): o `[B, H, E]` in q's dtype with o = q S', and S' = lam S + k^T v, `[B, H, D, E]` float32.
    """
    _check_qkv(q, k, v, "(B, H, D)")
    B, H, D = q.shape
    _check_slope(slope, H, q.device)
    _check_state(state, "state", (B, H, D, v.shape[-1]), q.device)
    return _step_torch(q, k, v, slope, state)


def _step_torch(q, k, v, slope, state):
    """reference.lightning_attn_step in fewer kernels (outer product, one fused multiply-add with the decayed
    state, one batched matmul): decoding runs this once per layer and token, where launches, not bytes, cost."""
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    S = k.to(dt).unsqueeze(-1) * v.to(dt).unsqueeze(-2)
    if state is not None:
        if slope is None:
            S = S + state.to(dt)
        else:
            S = torch.addcmul(S, state.to(dt), torch.exp(-slope.detach().to(dt))[:, None, None])
    o = torch.matmul(q.to(dt).unsqueeze(-2), S).squeeze(-2)
    return o.to(q.dtype), S


def srms_norm(x, eps=1e-6):
    """Simple RMSNorm without weight: y = x * rsqrt(mean(x^2, -1) + eps), float32 inside, returned in x's dtype.

    Triton on CUDA (`tnl_kernels.srms_norm_triton`), torch on CPU; TNL_KERNEL_BACKEND forces one. Differentiable.
    Under torch.compile the plain formula, for inductor to fuse with its neighbours (see tnl.custom_ops)."""
    _tensor(x, "x")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if torch.compiler.is_compiling():  # the formula: inductor fuses it with the adds, gates and casts around it
        return reference.srms_norm(x, eps)
    if _backend(x.device) == "triton":
        return _triton_fn("srms_norm_triton", x.device)(x, float(eps))
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
