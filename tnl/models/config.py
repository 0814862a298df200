"""ModelArgs: the one typed view of a model config (a configs/model/*.yaml mapping or an HF config).

A typo in a model config fails here, naming the key, instead of being silently ignored ten layers down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ARCHS = ("tnl", "llama")


@dataclasses.dataclass
class ModelArgs:
    """Architecture hyper-parameters shared by TNL and LLaMA (HF-style names)."""

    arch: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int  # TNL: SGLU width; LLaMA: SwiGLU width
    tie_word_embeddings: bool = True
    norm_eps: float = 1e-6
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False
    # TNL, inside torch.compile'd blocks: save only the outputs of matmuls and of the LA2 op for backward and recompute
    # the elementwise work (norms, SiLU, LRPE, gates, products) there, fused into the backward kernels. Same math;
    # less memory (tnl_385m: ~27.6 instead of ~43.5 KB saved per token and layer, measured on CPU). Off: untimed.
    recompute_elementwise: bool = False
    # Tokens per chunk of the chunked cross-entropy (the (chunk, vocab) logits are never all alive at once).
    loss_chunk_size: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # --- TNL only ---
    lrpe_layers: tuple[int, ...] = (0,)  # layers that apply LRPE (the release: layer 0 only)
    no_scale_embedding: bool = False  # False: embeddings are multiplied by sqrt(hidden_size)
    gate_rank: int = 0  # 0: fused q/k/v/u projection (TNL); r > 0: fused q/k/v + rank-r sigmoid output gate (TNL3)
    # --- LLaMA only ---
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096  # only written into the exported HF config; RoPE has no table

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model config: arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "loss_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model config: hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"model config: RoPE needs an even head dim, got {self.head_dim}")
        self.lrpe_layers = tuple(int(i) for i in (self.lrpe_layers or ()))
        bad = [i for i in self.lrpe_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"model config: lrpe_layers {bad} out of range for {self.num_hidden_layers} layers")
        if self.gate_rank < 0:
            raise ValueError(f"model config: gate_rank must be >= 0, got {self.gate_rank}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ModelArgs:
        """Build from a flat mapping (the resolved Hydra `model` group). Unknown keys raise ValueError."""
        if not isinstance(cfg, Mapping):
            raise TypeError(f"model config must be a mapping, got {type(cfg).__name__}")
        data = dict(cfg)
        data.pop("name", None)  # a config may carry its own name; it does not shape the model
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise ValueError(f"model config: missing key(s) {missing}")
        if "lrpe_layers" in data and data["lrpe_layers"] is not None:
            data["lrpe_layers"] = tuple(data["lrpe_layers"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lrpe_layers"] = list(self.lrpe_layers)
        return out
