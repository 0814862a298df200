"""Lightning Attention-2 (DESIGN.md, Contract 1): the chunked op for training and prefill, the one-token step for
decoding.

Every call validates its arguments (tnl.ops.validate), then runs the backend in force (tnl.ops.settings.backend):
the Triton kernels (tnl.ops.triton_backend), or the chunked pure-torch path of tnl.reference. Under torch.compile
the chunked op is one custom op of the graph (tnl.ops.custom_ops), forward and backward.
"""

import torch

from tnl import reference
from tnl.ops import custom_ops, settings, triton_backend
from tnl.ops.validate import check_cu_seqlens, check_qkv, check_slope, check_state

__all__ = ["lightning_attn", "lightning_attn_step"]


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
    `initial_state`. Backend: Triton on CUDA, pure torch on CPU, unless tnl.ops.configure(backend=...) (or the
    TNL_KERNEL_BACKEND override) names one.
    Under torch.compile the call is one custom op of the graph (tnl.ops.custom_ops), forward and backward.

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
    check_qkv(q, k, v, "(B, T, H, D)")
    B, T, H, D = q.shape
    E = v.shape[-1]
    check_slope(slope, H, q.device)
    N = check_cu_seqlens(cu_seqlens, B, T, q.device)
    check_state(initial_state, "initial_state", (N, H, D, E), q.device)
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {type(output_final_state).__name__}")

    if torch.compiler.is_compiling():  # one opaque node of the graph, backend chosen when it runs
        return custom_ops.lightning_attn(q, k, v, slope, initial_state, output_final_state, cu_seqlens)
    if settings.backend(q.device) == "triton":
        fn = triton_backend.triton_fn("lightning_attn_triton", q.device)
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
    check_qkv(q, k, v, "(B, H, D)")
    B, H, D = q.shape
    check_slope(slope, H, q.device)
    check_state(state, "state", (B, H, D, v.shape[-1]), q.device)
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
