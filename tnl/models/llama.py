"""LLaMA baseline: pre-norm RMSNorm, causal softmax attention with RoPE, SwiGLU, no biases.

The math is transformers' LlamaForCausalLM (half-split RoPE, inv_freq = theta^(-2i/d)), so the export to a stock
LlamaForCausalLM only renames and splits weights. q/k/v and gate/up are fused here (one GEMM each).
Attention: torch SDPA (flash backend on CUDA); with cu_seqlens on CUDA, flash_attn's varlen kernel when installed,
else torch's own varlen flash attention when this torch has it, else SDPA per document (always on CPU). RoPE
positions restart at each document.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tnl.models.common import Embedding, Linear, LMOutput, check_inputs, doc_positions
from tnl.models.config import ModelArgs
from tnl.ops import lm_head_loss

try:  # optional: flash_attn's varlen kernel for packed documents on CUDA
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _torch_varlen():
    """torch's own flash varlen attention (torch.nn.attention.varlen, recent torch) as f(q, k, v, cu, max_len), causal;
    None when this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        return lambda q, k, v, cu, n: varlen_attn(q, k, v, cu, cu, n, n, window_size=(-1, 0))
    if "is_causal" in params:
        return lambda q, k, v, cu, n: varlen_attn(q, k, v, cu, cu, n, n, is_causal=True)
    return None


_varlen_failed = False


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for integer positions (T,), transformers' default RoPE layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, Dh); cos/sin (T, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    return x * cos + rotated * sin


def causal_attention(q, k, v, cu_seqlens=None):
    """Causal softmax attention; q, k, v (B, T, H, Dh) -> (B, T, H, Dh). With cu_seqlens (B == 1), only within
    each document."""
    if cu_seqlens is None:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return o.transpose(1, 2)
    global _varlen_failed
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        if flash_attn_varlen_func is not None:
            return flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, max_len, max_len, causal=True)[None]
        varlen = None if _varlen_failed else _torch_varlen()
        if varlen is not None:
            try:
                return varlen(q[0], k[0], v[0], cu, max_len)[None]
            except (RuntimeError, TypeError, ValueError) as err:  # unsupported GPU / shape: SDPA per document
                _varlen_failed = True
                log.warning("torch varlen attention unavailable (%s); using SDPA per document", err)
    bounds = cu_seqlens.tolist()
    outs = [causal_attention(q[:, s:e], k[:, s:e], v[:, s:e]) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(outs, dim=1)


class LlamaAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, std = args.hidden_size, args.initializer_range
        self.num_heads, self.head_dim = args.num_attention_heads, args.head_dim
        self.qkv_proj = Linear(D, 3 * D, std)
        self.o_proj = Linear(D, D, std)

    def forward(self, x, cos, sin, cu_seqlens=None):
        B, T, D = x.shape
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = causal_attention(q, k, v, cu_seqlens)
        return self.o_proj(o.reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, std: float):
        super().__init__()
        self.gate_up_proj = Linear(dim, 2 * hidden, std)
        self.down_proj = Linear(hidden, dim, std)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.norm_eps)
        self.self_attn = LlamaAttention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.norm_eps)
        self.mlp = SwiGLU(args.hidden_size, args.intermediate_size, args.initializer_range)

    def forward(self, x, cos, sin, cu_seqlens=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaLM(nn.Module):
    """Training-form LLaMA: forward(input_ids, targets=None, cu_seqlens=None) -> LMOutput (see INTERFACES C)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.arch != "llama":
            raise ValueError(f"LlamaLM needs arch 'llama', got {args.arch!r}")
        self.args = args
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size, args.initializer_range)
        self.layers = nn.ModuleList(LlamaBlock(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.norm_eps)
        if not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, args.initializer_range)
        self.gradient_checkpointing = bool(args.gradient_checkpointing)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.args.tie_word_embeddings else self.lm_head.weight

    def forward(self, input_ids, targets=None, cu_seqlens=None) -> LMOutput:
        check_inputs(input_ids, targets, cu_seqlens)
        T = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        if cu_seqlens is None:
            positions = torch.arange(T, device=x.device)
        else:
            positions = doc_positions(cu_seqlens, T, x.device)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, x.dtype)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                x = checkpoint(layer, x, cos, sin, cu_seqlens, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cu_seqlens)
        h = self.norm(x)
        if targets is None:
            return LMOutput(loss=None, logits=F.linear(h, self.output_weight))
        return LMOutput(loss=lm_head_loss(h, self.output_weight, targets, self.args.loss_chunk_size), logits=None)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x matmul parameters + 3 x causal attention forward (q k^T and p v over
        seq_len/2 keys on average: 2 * seq_len * D per layer)."""
        a = self.args
        D, L = a.hidden_size, a.num_hidden_layers
        matmul = L * (4 * D * D + 3 * D * a.intermediate_size) + a.vocab_size * D
        return 6.0 * matmul + 3.0 * L * 2.0 * seq_len * D
