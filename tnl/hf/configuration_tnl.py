"""TnlConfig: the Hugging Face configuration of TransNormerLLM (standard HF names + TNL's own fields).

Self-contained (imports transformers only): it is copied verbatim next to exported checkpoints.

TnlConfig.save_pretrained (and so TnlForCausalLM.save_pretrained, Trainer's checkpoints and push_to_hub's folder)
writes config.json with `auto_map` plus the self-contained modeling files, so that
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) works where tnl is not installed. The files come
from the bundler in tnl.hf.bundle when tnl is installed (tnl.hf registers it through set_bundle_sources). A bundled copy
loaded with trust_remote_code has no bundler: there transformers itself copies a remote-code model's module and its
relative imports (the whole bundle, listed at the end of modeling_tnl.py) when the model is saved, and this module
adds the bundle's files when they lie beside it.
"""

import logging
from pathlib import Path

from transformers import PretrainedConfig

AUTO_MAP = {"AutoConfig": "configuration_tnl.TnlConfig", "AutoModelForCausalLM": "modeling_tnl.TnlForCausalLM"}
_bundle_sources = None  # () -> {file name: source}; set by tnl.hf, None in a bundled copy

log = logging.getLogger(__name__)


def set_bundle_sources(fn) -> None:
    """Where save_pretrained gets the modeling files: fn() -> {file name: source} (tnl.hf.bundle.bundle_sources)."""
    global _bundle_sources
    _bundle_sources = fn


def remote_code_files() -> dict[str, str]:
    """{file name: source} of the self-contained modeling code that save_pretrained writes beside config.json.

    Without a registered bundler (this module is a bundled copy), the files of the bundle it was loaded from when
    modeling_tnl.py lies beside it: this file, modeling_tnl.py and everything modeling_tnl.py imports relatively;
    else empty (transformers keeps each remote-code module in its own cache folder)."""
    if _bundle_sources is not None:
        return dict(_bundle_sources())
    from transformers.dynamic_module_utils import get_relative_import_files

    here = Path(__file__).resolve()
    modeling = here.with_name("modeling_tnl.py")
    if not modeling.is_file():
        return {}
    files = {here, modeling, *(Path(f).resolve() for f in get_relative_import_files(str(modeling)))}
    return {f.name: f.read_text(encoding="utf-8") for f in sorted(files)}


def write_remote_code(folder) -> list[str]:
    """Write the self-contained modeling files into `folder` (unchanged files are left alone); returns their names."""
    files = remote_code_files()
    if not files and not (Path(folder) / "modeling_tnl.py").is_file():  # else the model's save copied them
        log.warning("TnlConfig.save_pretrained: no modeling code to write into %s (only the config was loaded); "
                    "AutoModelForCausalLM with trust_remote_code will not load that folder", folder)
    for name, source in files.items():
        path = Path(folder) / name
        if not path.is_file() or path.read_text(encoding="utf-8") != source:
            path.write_text(source, encoding="utf-8")
    return sorted(files)


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

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """config.json with `auto_map`, plus the self-contained modeling files (see the module docstring).

        push_to_hub=True saves locally, then uploads through push_to_hub (which saves the same files into a fresh
        folder and uploads all of it); its keyword arguments (repo_id, commit_message, token, ...) pass through."""
        self.auto_map = dict(AUTO_MAP)
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        write_remote_code(save_directory)
        super().save_pretrained(save_directory)
        if push_to_hub:
            return self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), **kwargs)
        return None
