"""Argument checks of the public ops (DESIGN.md, Contract 1): one ValueError/TypeError naming the bad argument.

Value checks (slope >= 0, cu_seqlens boundaries) read the tensor on the host, a device sync; a passed check is
remembered per tensor object and version, so a model passing the same tensors to every layer pays it once.
"""

import weakref

import torch

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_DIM = 256


def tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_slope(slope, H, device):
    if slope is None:
        return
    tensor(slope, "slope")
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


def check_cu_seqlens(cu_seqlens, B, T, device):
    """Validates cu_seqlens; returns N, the number of sequences."""
    if cu_seqlens is None:
        return B
    tensor(cu_seqlens, "cu_seqlens")
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


def check_state(state, name, shape, device):
    if state is None:
        return
    tensor(state, name)
    if state.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {state.dtype}")
    if tuple(state.shape) != shape:
        raise ValueError(f"{name} must have shape (N, H, D, E) = {shape}, got {tuple(state.shape)}")
    if state.device != device:
        raise ValueError(f"{name} is on {state.device} but q is on {device}")


def check_qkv(q, k, v, layout):
    """Common checks of q, k (..., H, D) and v (..., H, E); `layout` names the expected dims, e.g. '(B, T, H, D)'."""
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        tensor(x, name)
    ndim = layout.count(",") + 1
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.dim() != ndim:
            shape = layout if name != "v" else layout.replace("D)", "E)")
            raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {tuple(x.shape)}")
    if q.dtype not in DTYPES:
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
        if not 1 <= x.shape[-1] <= MAX_DIM:
            raise ValueError(f"{name}'s head dim must be in 1..{MAX_DIM}, got {x.shape[-1]}")
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        if x.shape[-1] > 1 and x.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride on its last dim, got strides {x.stride()}")
    if any(s == 0 for s in q.shape[:-1]):
        raise ValueError(f"q must not have an empty dimension, got shape {tuple(q.shape)}")
