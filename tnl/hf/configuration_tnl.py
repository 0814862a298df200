"""TnlConfig: the Hugging Face configuration of TransNormerLLM (standard HF names + TNL's own fields).

Self-contained (imports transformers only): it is copied verbatim next to exported checkpoints.
"""

from transformers import PretrainedConfig


class TnlConfig(PretrainedConfig):
    """TransNormerLLM configuration.

    Standard names: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size (the SGLU
    width), tie_word_embeddings, bos/eos/pad_token_id, initializer_range, use_cache.
    TNL's own: norm_eps (SRMSNorm epsilon), lrpe_layers (layers with LRPE; the release: [0]), no_scale_embedding
    (False: embeddings * sqrt(hidden_size)), gate_rank (0: fused q/k/v/u; r > 0: TNL3's rank-r sigmoid output
    gate), loss_chunk_size (tokens per chunk of the cross-entropy).
    """

    model_type = "tnl"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=64000,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=8,
        intermediate_size=2816,
        norm_eps=1e-6,
        initializer_range=0.02,
        lrpe_layers=(0,),
        no_scale_embedding=False,
        gate_rank=0,
        loss_chunk_size=4096,
        use_cache=True,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.lrpe_layers = list(lrpe_layers or [])
        self.no_scale_embedding = no_scale_embedding
        self.gate_rank = gate_rank
        self.loss_chunk_size = loss_chunk_size
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
