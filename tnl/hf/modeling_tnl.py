"""TnlForCausalLM: TransNormerLLM as a Hugging Face PreTrainedModel with recurrent generate().

The modules and their parameter names are those of the training model (tnl.models.tnl.TnlModules), so a training
state dict loads directly. Prefill runs the chunked Lightning Attention-2 op with output_final_state=True; each
further token is one O(1) recurrent step (tnl.ops.lightning_attn_step) from the per-layer states held in TnlCache.
LRPE is relative (it depends on n - m only) and the decay is relative, so the position offset is simply the number
of tokens seen. Left padding: padded tokens get v = 0, so they add nothing to the state and later tokens see exactly
what an unpadded row sees. Beam search reorders the states (TnlCache.reorder_cache).

Written against transformers 5.x: works with both cache keyword names (`past_key_values`, 5.17; `cache`, 5.24+).
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from tnl.hf.configuration_tnl import TnlConfig
from tnl.models.config import ModelArgs
from tnl.models.tnl import Lrpe, TnlModules, lrpe_theta_init
from tnl.ops import IGNORE_INDEX, lm_head_loss

try:
    from transformers import initialization as hf_init
except ImportError:  # pragma: no cover - older transformers
    hf_init = None


# The keyword transformers' generation loop uses for the cache: `cache` from 5.2x on, `past_key_values` on 5.17.
_CACHE_KEY = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
              else "past_key_values")


def args_from_config(config: TnlConfig) -> ModelArgs:
    """The core ModelArgs of a TnlConfig."""
    return ModelArgs(
        arch="tnl", vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, tie_word_embeddings=bool(config.tie_word_embeddings),
        norm_eps=config.norm_eps, initializer_range=config.initializer_range,
        loss_chunk_size=config.loss_chunk_size, lrpe_layers=tuple(config.lrpe_layers),
        no_scale_embedding=bool(config.no_scale_embedding), gate_rank=int(config.gate_rank),
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)


class TnlStateLayer:
    """One layer's recurrent state S (B, H, Dq, Dh) float32 (the TRUE state of Contract 1), or None."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.state: torch.Tensor | None = None

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def reset(self) -> None:
        self.state = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(0, beam_idx.to(self.state.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self.state = self.state.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state[indices]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("a TNL recurrent state cannot be rolled back (crop)")

    def offload(self) -> None:
        pass

    def prefetch(self) -> None:
        pass

    def get_max_length(self) -> int:
        return -1


class TnlCache(Cache):
    """Per-layer recurrent states plus the number of tokens seen (the LRPE offset). O(1) memory in context length."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[TnlStateLayer() for _ in range(num_layers)])
        self.seen_tokens = 0

    @property
    def states(self) -> list[torch.Tensor | None]:
        return [layer.state for layer in self.layers]

    def update_states(self, states: list[torch.Tensor], num_new_tokens: int) -> None:
        for layer, s in zip(self.layers, states):
            layer.state = s
        self.seen_tokens += num_new_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("a TNL recurrent state cannot be rolled back (crop); generate without assistants")


# loss / logits and the cache, the latter under the field name the installed transformers' generation loop reads
# (a ModelOutput with both fields is refused by 5.2x, which renames past_key_values itself).
TnlCausalLMOutput = dataclasses.make_dataclass(
    "TnlCausalLMOutput",
    [("loss", "torch.FloatTensor | None", dataclasses.field(default=None)),
     ("logits", "torch.FloatTensor | None", dataclasses.field(default=None)),
     (_CACHE_KEY, "Cache | None", dataclasses.field(default=None)),
     ("hidden_states", "tuple[torch.FloatTensor, ...] | None", dataclasses.field(default=None))],
    bases=(ModelOutput,), namespace={"__module__": __name__})


class TnlPreTrainedModel(PreTrainedModel):
    config_class = TnlConfig
    base_model_prefix = "tnl"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TnlBlock"]
    _is_stateful = True

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear / Embedding: N(0, initializer_range)
        if isinstance(module, Lrpe):
            theta = lrpe_theta_init(*module.theta.shape).to(module.theta.device)
            if hf_init is not None:
                hf_init.copy_(module.theta, theta)
            else:  # pragma: no cover
                with torch.no_grad():
                    module.theta.copy_(theta)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a TnlCache, made in prepare_inputs_for_generation


class TnlForCausalLM(TnlModules, TnlPreTrainedModel, GenerationMixin):
    """TransNormerLLM causal LM. forward(input_ids, attention_mask, labels, cache/past_key_values, use_cache)."""

    def __init__(self, config: TnlConfig):
        super().__init__(config)
        self._build_tnl(args_from_config(config))
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return None if self.args.tie_word_embeddings else self.lm_head

    def _as_tnl_cache(self, cache) -> TnlCache | None:
        if cache is None or isinstance(cache, TnlCache):
            return cache
        if isinstance(cache, Cache) and cache.get_seq_length() == 0:
            return None  # an empty default cache made by generate(): replaced by a TnlCache
        raise TypeError(f"TnlForCausalLM needs a TnlCache, got {type(cache).__name__}")

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, output_hidden_states=None, return_dict=None,
                **kwargs):
        """input_ids (B, T); attention_mask (B, past + T), 0 = padding; labels (B, T) unshifted, -100 ignored.

        With a cache holding states, input_ids are the new tokens only (T == 1 decodes in O(1)). The loss is the mean
        over the labelled tokens, or their sum / num_items_in_batch when transformers' Trainer passes that keyword
        (so gradient accumulation weighs every token alike)."""
        if inputs_embeds is not None:
            raise ValueError("TnlForCausalLM takes input_ids; inputs_embeds is not supported")
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("input_ids of shape (batch, seq_len) is required")
        cache = self._as_tnl_cache(cache if cache is not None else past_key_values)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = TnlCache(self.config.num_hidden_layers)
        B, T = input_ids.shape
        offset = cache.seen_tokens if cache is not None else 0
        positions = torch.arange(offset, offset + T, device=input_ids.device)
        states = cache.states if cache is not None and cache.seen_tokens > 0 else None
        padding_mask = None
        # Padding only matters where tokens may be padded (prefill / recompute); a decode step's token is always
        # real, and skipping the check there avoids a device sync per generated token.
        if attention_mask is not None and not (T == 1 and states is not None):
            am = attention_mask[:, -T:]
            if not bool(am.all()):
                padding_mask = am
        h, new_states = self._hidden_states(input_ids, positions, None, states, padding_mask,
                                            return_states=cache is not None)
        if cache is not None:
            cache.update_states(new_states, T)
        loss = None
        if labels is not None:
            shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            loss = lm_head_loss(h, self.output_weight, shifted, self.args.loss_chunk_size)
            num_items = kwargs.get("num_items_in_batch")
            if num_items is not None:  # Trainer: sum of token losses / the tokens of the whole accumulated step
                loss = loss * (shifted != IGNORE_INDEX).sum() / num_items
        if isinstance(logits_to_keep, int):
            h_out = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h_out = h[:, logits_to_keep]
        logits = F.linear(h_out, self.output_weight)
        # transformers >= 5.2x renames past_key_values to `cache` inside ModelOutput; 5.17 keeps past_key_values.
        out = TnlCausalLMOutput(loss=loss, logits=logits, hidden_states=(h,) if output_hidden_states else None,
                                **{_CACHE_KEY: cache})
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, use_cache=True, logits_to_keep=None, **kwargs):
        """Feed only the tokens the cache has not seen; make a fresh TnlCache on the first step."""
        if inputs_embeds is not None:
            raise ValueError("TnlForCausalLM.generate takes input_ids; inputs_embeds is not supported")
        cache = self._as_tnl_cache(cache if cache is not None else past_key_values)
        if cache is not None and cache.seen_tokens > 0:
            input_ids = input_ids[:, cache.seen_tokens:]
        elif use_cache:
            cache = TnlCache(self.config.num_hidden_layers)
        # only the keyword the installed generation loop uses: passing the other one makes 5.2x warn that it is
        # deprecated (and a later release refuse it)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache, _CACHE_KEY: cache}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs
