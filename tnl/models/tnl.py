"""TransNormerLLM (TNL) as released by OpenNLPLab, on the Lightning Attention-2 op (tnl.ops).

Per block (pre-norm, no weights in the norms):
    x = x + TokenMixer(srms(x));  x = x + SGLU(srms(x))
TokenMixer (NormLinearAttention):
    q, k, v, u = qkvu_proj(x)                      one bias-free fused projection
    q, k = silu(q), silu(k)                        (v and u get no activation)
    q, k = lrpe(q), lrpe(k)                        layer 0 only: [x cos(n theta), x sin(n theta)] doubles q/k head dim
    o = lightning_attn(q, k, v, slope_l)           o_t = q_t S_t, S_t = exp(-slope) S_{t-1} + k_t^T v_t
    out_proj(u * srms(o))                          SRMSNorm over all heads at once, then the u gate
The TNL3 variant (gate_rank = r > 0, the 15B) fuses only q/k/v and gates with sigmoid(W_up W_down x), rank r.
slope_l[h] = 2^(-8(h+1)/H) (ALiBi slopes, ALiBi's rule for H not a power of 2) * (1 - l/(L-1) + 1e-5).
SGLU: l3(l1(x) * l2(x)), no activation. Embeddings scaled by sqrt(D) (unless no_scale_embedding), final SRMSNorm,
output projection tied to the embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tnl.models.common import (
    Embedding,
    Linear,
    LMOutput,
    check_inputs,
    doc_positions,
    recompute_elementwise,
)
from tnl.models.config import ModelArgs
from tnl.ops import (
    lightning_attn,
    lightning_attn_sp,
    lightning_attn_step,
    lm_head_loss,
    sequence_parallel_loss,
    srms_norm,
)

# Block size assumed when counting LA2's intra-block FLOPs for MFU (the chunked kernels' order of magnitude).
LA2_FLOPS_BLOCK = 64


def alibi_slopes(n: int) -> list[float]:
    """ALiBi head slopes: 2^(-8(h+1)/n) for n a power of 2; otherwise those of the closest lower power of 2
    followed by every other slope of the next power of 2 (the ALiBi paper's rule, as in the TNL release)."""
    if n <= 0:
        raise ValueError(f"number of heads must be positive, got {n}")
    if math.log2(n).is_integer():
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    p = 2 ** math.floor(math.log2(n))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: n - p]


def tnl_layer_slopes(num_heads: int, layer_idx: int, num_layers: int) -> list[float]:
    """Decay rates of layer `layer_idx` of `num_layers`: ALiBi slopes * (1 - l/(L-1) + 1e-5) (L = 1: factor 1+1e-5)."""
    frac = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    return [s * (1.0 - frac + 1e-5) for s in alibi_slopes(num_heads)]


def lrpe_theta_init(num_heads: int, head_dim: int) -> torch.Tensor:
    """Released LRPE init: theta_j = 10000^(-2j/d) over all d = H*Dh channels, laid out (H, Dh)."""
    d = num_heads * head_dim
    return (10000.0 ** (-2.0 / d * torch.arange(d, dtype=torch.float32))).reshape(num_heads, head_dim)


class Lrpe(nn.Module):
    """Linearized relative positional encoding: x (B, T, H, Dh) -> [x cos(n theta), x sin(n theta)] (B, T, H, 2Dh).

    q_n . k_m then depends on n - m only (sum x_q x_k cos(theta (n - m))), so absolute offsets do not matter."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.theta = nn.Parameter(lrpe_theta_init(num_heads, head_dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # positions: (T,) or (B, T) -> angles (..., T, H, Dh) in fp32, cast to x's dtype before the products.
        angle = positions.to(torch.float32)[..., None, None] * self.theta.float()
        return torch.cat([x * torch.cos(angle).to(x.dtype), x * torch.sin(angle).to(x.dtype)], dim=-1)


class NormLinearAttention(nn.Module):
    """TNL token mixer (see the module docstring). Works in training form, prefill and one-token decode."""

    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        D, H, std = args.hidden_size, args.num_attention_heads, args.initializer_range
        self.num_heads, self.head_dim, self.eps = H, D // H, args.norm_eps
        self.gate_rank = args.gate_rank
        if self.gate_rank:
            self.qkv_proj = Linear(D, 3 * D, std)
            self.output_gate = nn.Sequential(Linear(D, self.gate_rank, std), Linear(self.gate_rank, D, std))
        else:
            self.qkvu_proj = Linear(D, 4 * D, std)
        self.out_proj = Linear(D, D, std)
        self.lrpe = Lrpe(H, self.head_dim) if layer_idx in args.lrpe_layers else None
        self.slopes = tnl_layer_slopes(H, layer_idx, args.num_hidden_layers)
        self._slope_cache: dict[torch.device, torch.Tensor] = {}

    def slope(self, device: torch.device) -> torch.Tensor:
        """The (H,) float32 decay rates on `device` (kept out of the state dict: they are fixed by the config)."""
        s = self._slope_cache.get(device)
        if s is None:
            s = self._slope_cache[device] = torch.tensor(self.slopes, dtype=torch.float32, device=device)
        return s

    def forward(self, x, positions, cu_seqlens=None, state=None, padding_mask=None, return_state=False, sp=None,
                slope=None):
        """x (B, T, D); positions (T,) or (B, T); state (B, H, Dq, Dh) fp32 or None; padding_mask (B, T) 1 = token;
        sp: a tnl.ops.SequenceContext when x is one rank's chunk of a sequence-parallel group (training form);
        slope: this layer's decay rates, self.slope(x.device) when None. The model passes them in, so that a
        compiled block takes them as a tensor input: read inside the graph, dynamo would guard on each layer's
        values and recompile the block code shared by all layers once per layer (past its recompile limit of 8
        the remaining layers silently ran eager; seen on an H100 with torch 2.11).

        Returns (out (B, T, D), final state or None). T == 1 with a state takes the O(1) recurrent step."""
        B, T, D = x.shape
        if slope is None:
            slope = self.slope(x.device)
        H, Dh = self.num_heads, self.head_dim
        if self.gate_rank:
            q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
            u = torch.sigmoid(self.output_gate(x))
        else:
            q, k, v, u = self.qkvu_proj(x).chunk(4, dim=-1)
        q = F.silu(q).view(B, T, H, Dh)
        k = F.silu(k).view(B, T, H, Dh)
        v = v.reshape(B, T, H, Dh)
        if self.lrpe is not None:
            q, k = self.lrpe(q, positions), self.lrpe(k, positions)
        if padding_mask is not None:  # padded tokens write nothing into the state (k^T 0 = 0)
            v = v * padding_mask[:, :, None, None].to(v.dtype)
        if sp is not None:
            o = lightning_attn_sp(q, k, v, slope, group=sp.group, cu_seqlens=cu_seqlens, carry_in=sp.shard.carry_in)
        elif T == 1 and state is not None:
            o, state = lightning_attn_step(q[:, 0], k[:, 0], v[:, 0], slope, state)
            o = o[:, None]
        else:  # under torch.compile: one custom op of the graph (tnl.ops.custom_ops)
            o, state = lightning_attn(q, k, v, slope, initial_state=state, output_final_state=return_state,
                                      cu_seqlens=cu_seqlens)
        o = srms_norm(o.reshape(B, T, D), self.eps)
        return self.out_proj(u * o), state


class SGLU(nn.Module):
    """TNL channel mixer: l3(l1(x) * l2(x)), a GLU without activation."""

    def __init__(self, dim: int, hidden: int, std: float):
        super().__init__()
        self.l1 = Linear(dim, hidden, std)
        self.l2 = Linear(dim, hidden, std)
        self.l3 = Linear(hidden, dim, std)

    def forward(self, x):
        return self.l3(self.l1(x) * self.l2(x))


class TnlBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int):
        super().__init__()
        self.eps = args.norm_eps
        self.recompute = bool(args.recompute_elementwise)
        self.token_mixer = NormLinearAttention(args, layer_idx)
        self.channel_mixer = SGLU(args.hidden_size, args.intermediate_size, args.initializer_range)

    def forward(self, x, positions, cu_seqlens=None, state=None, padding_mask=None, return_state=False, sp=None,
                slope=None):
        if (self.recompute and torch.compiler.is_compiling() and torch.is_grad_enabled() and state is None
                and not return_state and sp is None and padding_mask is None):
            return recompute_elementwise(self._mix, x, positions, cu_seqlens, slope=slope), None
        return self._mix(x, positions, cu_seqlens, state, padding_mask, return_state, sp, slope, with_state=True)

    def _mix(self, x, positions, cu_seqlens, state=None, padding_mask=None, return_state=False, sp=None, slope=None,
             with_state=False):
        h, state = self.token_mixer(srms_norm(x, self.eps), positions, cu_seqlens, state, padding_mask, return_state,
                                    sp, slope)
        x = x + h
        x = x + self.channel_mixer(srms_norm(x, self.eps))
        return (x, state) if with_state else x

    def forward_train(self, x, positions, cu_seqlens, sp=None, slope=None):
        return self.forward(x, positions, cu_seqlens, sp=sp, slope=slope)[0]


def _checkpoint(fn, *args):
    return checkpoint(fn, *args, use_reentrant=False)


class TnlModules:
    """Modules + forward shared by the training model (TnlLM) and the HF wrapper (TnlForCausalLM), so both have the
    same parameter names: embed_tokens.weight, layers.<i>.token_mixer.*, layers.<i>.channel_mixer.*, [lm_head]."""

    def _build_tnl(self, args: ModelArgs) -> None:
        self.args = args
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size, args.initializer_range)
        self.layers = nn.ModuleList(TnlBlock(args, i) for i in range(args.num_hidden_layers))
        if not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, args.initializer_range)
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(args.hidden_size)
        self.gradient_checkpointing = bool(args.gradient_checkpointing)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.args.tie_word_embeddings else self.lm_head.weight

    def _hidden_states(self, input_ids, positions, cu_seqlens=None, states=None, padding_mask=None,
                       return_states=False, sp=None):
        """Embed, run every block, final SRMSNorm. Returns (hidden (B, T, D), list of per-layer states or None)."""
        x = self.embed_tokens(input_ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        new_states = [] if return_states else None
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and states is None
        # transformers' gradient_checkpointing_enable() sets its checkpoint function (its kwargs, CPU offload)
        ckpt = getattr(self, "_gradient_checkpointing_func", None) or _checkpoint
        for i, layer in enumerate(self.layers):
            slope = layer.token_mixer.slope(x.device)  # an input of the (compiled) block, see NormLinearAttention
            if use_ckpt and not return_states:
                x = ckpt(layer.forward_train, x, positions, cu_seqlens, sp, slope)
                continue
            x, s = layer(x, positions, cu_seqlens, None if states is None else states[i], padding_mask,
                         return_states, sp, slope)
            if return_states:
                new_states.append(s)
        return srms_norm(x, self.args.norm_eps), new_states


def tnl_flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters (incl. the output projection) + 3 x LA2 forward FLOPs.

    LA2 forward per token, layer and head: intra-block q k^T and (q k^T) v over a causal block of size
    b = min(seq_len, LA2_FLOPS_BLOCK) (b/2 keys on average, 2 FLOPs per MAC) plus the inter-block q S and the
    state update k^T v (2 Dq E each)."""
    D, H, L, F_ = args.hidden_size, args.num_attention_heads, args.num_hidden_layers, args.intermediate_size
    Dh = D // H
    attn_proj = (3 * D * D + 2 * D * args.gate_rank) if args.gate_rank else 4 * D * D
    matmul = L * (attn_proj + D * D + 3 * D * F_) + args.vocab_size * D
    b = min(seq_len, LA2_FLOPS_BLOCK)
    la = 0.0
    for i in range(L):
        dq = 2 * Dh if i in args.lrpe_layers else Dh
        la += H * (b * (dq + Dh) + 4 * dq * Dh)
    return 6.0 * matmul + 3.0 * la


class TnlLM(TnlModules, nn.Module):
    """Training-form TNL: forward(input_ids, targets=None, cu_seqlens=None) -> LMOutput (see INTERFACES C)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.arch != "tnl":
            raise ValueError(f"TnlLM needs arch 'tnl', got {args.arch!r}")
        self._build_tnl(args)  # every weight is initialised N(0, initializer_range) by its own constructor

    def forward(self, input_ids, targets=None, cu_seqlens=None, sp=None) -> LMOutput:
        """Training form (INTERFACES C). With `sp` (a tnl.ops.SequenceContext) the inputs are this rank's chunk
        of a sequence split over a sequence-parallel group (cu_seqlens local to the chunk): LRPE positions continue
        from the chunk's first in-document position, attention runs through lightning_attn_sp, and the loss VALUE is
        the mean over the whole sequence (same on every rank of the group) while its gradient is only this rank's
        share (sum of its token losses / all tokens): summing gradients over the group gives the one-rank gradient."""
        check_inputs(input_ids, targets, cu_seqlens)
        T = input_ids.shape[1]
        if cu_seqlens is None:
            positions = torch.arange(T, device=input_ids.device)
        else:
            positions = doc_positions(cu_seqlens, T, input_ids.device)
        if sp is not None and sp.shard.first_pos:  # the chunk's first document started on an earlier rank
            first = T if cu_seqlens is None else int(cu_seqlens[1])
            positions = positions + sp.shard.first_pos * (torch.arange(T, device=input_ids.device) < first)
        h, _ = self._hidden_states(input_ids, positions, cu_seqlens, sp=sp)
        if targets is None:
            return LMOutput(loss=None, logits=F.linear(h, self.output_weight))
        loss = lm_head_loss(h, self.output_weight, targets, self.args.loss_chunk_size)
        if sp is not None:
            loss = sequence_parallel_loss(loss, targets, sp.group)
        return LMOutput(loss=loss, logits=None)

    def flops_per_token(self, seq_len: int) -> float:
        return tnl_flops_per_token(self.args, seq_len)
