"""tnl.data: tokenizer training, pre-tokenized token shards, and the packed resumable loader.

Corpora are files (.txt cut into documents by tnl.data.readers' rules, .jsonl, .parquet), the embedded demo corpus,
or a Hugging Face dataset (data.hf, tnl.data.hf_source); tnl.data.sources says what each input is and how it is read.

    prepare(cfg_data, force=False) -> Path     build (or reuse) tokenizer + shards of a configs/data/*.yaml mapping
    is_prepared(cfg_data) -> bool              whether data.dir already holds exactly that build
    load_tokenizer(data_dir)                   encode/decode + bos/eos/pad ids (SentencePiece BPE)
    hf_tokenizer_dir(data_dir) -> Path         the same tokenizer in Hugging Face form (AutoTokenizer loads it)
    PackedLoader(data_dir, split, seq_len, micro_batch_size, rank=, world_size=, seed=, cu_seqlens=, weights=)
    tnl.data.mixture                           data.mix: members tokenized with the primary's tokenizer, their weights
"""

from tnl.data.config import DataConfig, DataError
from tnl.data.loader import PackedLoader, cu_seqlens_of
from tnl.data.pipeline import is_prepared, prepare, read_manifest
from tnl.data.tokenizer import Tokenizer, hf_tokenizer_dir, load_tokenizer

__all__ = [
    "DataConfig", "DataError", "PackedLoader", "Tokenizer", "cu_seqlens_of", "hf_tokenizer_dir", "is_prepared",
    "load_tokenizer", "prepare", "read_manifest",
]
