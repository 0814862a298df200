"""export_pretrained: a training model -> a Hugging Face directory, written atomically.

TNL   -> TnlForCausalLM: config.json (with auto_map), model.safetensors, generation_config.json and the bundled
         self-contained modeling code (tnl.hf.bundle), loadable with trust_remote_code=True where tnl is not installed;
         all of it written by TnlForCausalLM.save_pretrained itself (TnlConfig.save_pretrained adds the code).
LLaMA -> a stock transformers LlamaForCausalLM directory (q/k/v and gate/up split, names mapped).
Both get a model card, README.md (tnl.hf.card): architecture, size and what is known of the training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from tnl.hf.card import CardInfo, model_card
from tnl.hf.configuration_tnl import TnlConfig
from tnl.models.config import ModelArgs


def tnl_config_from_args(args: ModelArgs) -> TnlConfig:
    return TnlConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size,
        norm_eps=args.norm_eps, initializer_range=args.initializer_range, lrpe_layers=list(args.lrpe_layers),
        no_scale_embedding=args.no_scale_embedding, gate_rank=args.gate_rank, loss_chunk_size=args.loss_chunk_size,
        tie_word_embeddings=args.tie_word_embeddings, bos_token_id=args.bos_token_id,
        eos_token_id=args.eos_token_id, pad_token_id=args.pad_token_id)


def llama_config_from_args(args: ModelArgs):
    import inspect

    from transformers import LlamaConfig

    # transformers 5 takes RoPE settings as `rope_parameters`; 4.x as `rope_theta` (and ignores rope_parameters)
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": float(args.rope_theta)}}
    else:
        rope = {"rope_theta": float(args.rope_theta)}
    return LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_attention_heads, head_dim=args.head_dim, hidden_act="silu",
        max_position_embeddings=args.max_position_embeddings, rms_norm_eps=args.norm_eps,
        initializer_range=args.initializer_range, tie_word_embeddings=args.tie_word_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id,
        pad_token_id=args.pad_token_id, **rope)


def llama_state_dict_to_hf(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Core LlamaLM names -> transformers LlamaForCausalLM names (fused projections split)."""
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    out["lm_head.weight"] = sd["embed_tokens.weight"] if args.tie_word_embeddings else sd["lm_head.weight"]
    for i in range(args.num_hidden_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        wq, wk, wv = sd[p + "self_attn.qkv_proj.weight"].chunk(3, dim=0)
        gate, up = sd[p + "mlp.gate_up_proj.weight"].chunk(2, dim=0)
        out.update({
            q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk, q + "self_attn.v_proj.weight": wv,
            q + "self_attn.o_proj.weight": sd[p + "self_attn.o_proj.weight"],
            q + "mlp.gate_proj.weight": gate, q + "mlp.up_proj.weight": up,
            q + "mlp.down_proj.weight": sd[p + "mlp.down_proj.weight"],
            q + "input_layernorm.weight": sd[p + "input_layernorm.weight"],
            q + "post_attention_layernorm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    return {k: v.contiguous() for k, v in out.items()}


def _hf_model(model_cls, config, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Instantiate `model_cls(config)` without allocating, then adopt `state_dict` (strictly)."""
    with torch.device("meta"):
        hf = model_cls(config)
    missing, unexpected = hf.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"weights do not match {model_cls.__name__}: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings and hasattr(hf, "lm_head"):
        hf.lm_head.weight = hf.get_input_embeddings().weight
    return hf.eval()


def _unwrap(model):
    """The tnl model inside torch.compile (_orig_mod) / DeepSpeed or DDP (.module) wrappers."""
    for _ in range(4):
        if isinstance(getattr(model, "args", None), ModelArgs):
            break
        model = getattr(model, "_orig_mod", None) or getattr(model, "module", None) or model
    return model


def _write(model: nn.Module, tmp: Path, card: CardInfo | None) -> None:
    model = _unwrap(model)
    args: ModelArgs = getattr(model, "args", None)
    if not isinstance(args, ModelArgs):
        raise TypeError(f"export_pretrained needs a tnl.models model (TnlLM / LlamaLM), got {type(model).__name__}")
    sd = model.state_dict()
    if any(v.is_meta for v in sd.values()):
        raise ValueError("export_pretrained: the model has weights on the meta device (nothing to export)")
    sd = {k: v.detach().to("cpu") for k, v in sd.items()}
    if args.arch == "tnl":
        from tnl.hf.modeling_tnl import TnlForCausalLM

        config = tnl_config_from_args(args)
        config.architectures = ["TnlForCausalLM"]
        _hf_model(TnlForCausalLM, config, sd).save_pretrained(tmp)  # + auto_map and the modeling code
    else:
        from transformers import LlamaForCausalLM

        config = llama_config_from_args(args)
        _hf_model(LlamaForCausalLM, config, llama_state_dict_to_hf(sd, args)).save_pretrained(tmp)
    parameters = sum(p.numel() for p in model.parameters())
    (tmp / "README.md").write_text(model_card(args, parameters, card), encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """Give `folder` and its files the permissions of a normal mkdir / file write under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def export_pretrained(model: nn.Module, out_dir, tokenizer_dir=None, card: CardInfo | None = None) -> Path:
    """Write `model` (TnlLM or LlamaLM) as a Hugging Face directory at `out_dir` (replaced atomically if it exists).

    tokenizer_dir: optional folder of HF tokenizer files, all copied into out_dir. card: what is known of the
    training, for the model card README.md. Returns the output path."""
    out = Path(out_dir)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write(model, tmp, card)
        if tokenizer_dir is not None:
            for f in sorted(Path(tokenizer_dir).iterdir()):
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        _make_readable(tmp)  # mkdtemp makes the folder private (0700): an export is meant to be shared
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
