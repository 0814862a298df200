"""SentencePiece BPE tokenizer: training on a bounded line sample, loading, and the Hugging Face copy.

Settings chosen so text round-trips exactly and a plain `tokenizers` BPE reproduces the ids: identity
normalisation, no dummy prefix, no whitespace collapsing, byte fallback (any byte, e.g. a newline, becomes
<0xNN>), digits split, whitespace-only pieces allowed (indentation). Ids: 0 <unk>, 1 <s>, 2 </s> (EOS, ends every
document in the shards), 3 <pad>, then the 256 byte pieces, then merges.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tnl.data.errors import DataError

MODEL_FILE = "tokenizer.model"
HF_DIR = "hf_tokenizer"
SPECIALS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
_MAX_LINE = 4096  # characters per training "sentence"; longer lines are cut into pieces
_TRAIN_THREADS = 4


def sample_lines(docs: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of k non-blank lines of all documents (reservoir sampling, Li's Algorithm L), kept in
    corpus order; deterministic for a seed. One pass, memory bounded by k lines."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    w = 1.0
    next_i = 0
    i = -1
    for line in _lines(docs):
        i += 1
        if i < k:
            reservoir.append((i, line))
            if i == k - 1:
                w = _next_w(rng, w, k)
                next_i = i + _skip(rng, w)
            continue
        if i == next_i:
            reservoir[rng.randrange(k)] = (i, line)
            w = _next_w(rng, w, k)
            next_i = i + _skip(rng, w)
    return [line for _, line in sorted(reservoir)]


def _next_w(rng: random.Random, w: float, k: int) -> float:
    import math

    return w * math.exp(math.log(1.0 - rng.random()) / k)


def _skip(rng: random.Random, w: float) -> int:
    import math

    return int(math.log(1.0 - rng.random()) / math.log1p(-w)) + 1 if w < 1.0 else 1


def _lines(docs: Iterable[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            if line.strip():
                for j in range(0, len(line), _MAX_LINE):
                    yield line[j : j + _MAX_LINE]


def train_tokenizer(lines: list[str], out_path: str | os.PathLike, vocab_size: int) -> None:
    """Train a SentencePiece BPE model on `lines` and write it atomically to `out_path`. The thread count is fixed
    (it is stored in the model file): the same lines give the same bytes on any machine."""
    import sentencepiece as spm

    if not lines:
        raise DataError("the corpus has no text to train a tokenizer on (empty corpus)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            max_sentence_length=4 * _MAX_LINE,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            unk_piece=SPECIALS["unk"], bos_piece=SPECIALS["bos"], eos_piece=SPECIALS["eos"], pad_piece=SPECIALS["pad"],
            num_threads=_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"tokenizer training failed for data.vocab_size={vocab_size}: {msg}") from None
    _atomic_write(Path(out_path), model.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """A SentencePiece model with the interface tnl needs: encode/decode and the special ids."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece as spm

        self.model_file = str(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id(), self.sp.unk_id())
        self.newline_id = _newline_byte_id(self.model_file, self.sp)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def encode_docs(self, texts: list[str], dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        """Documents -> (their ids concatenated, each document followed by EOS; document lengths incl. EOS).

        Same ids as [encode(t) + [eos] for t in texts]. When no piece can span a newline (our own tokenizers:
        identity normalisation, no dummy prefix, '\\n' only as the byte piece <0x0A>), documents are encoded line
        by line and joined with <0x0A>: the same ids, about twice as fast on long documents (books)."""
        units = [t.split("\n") for t in texts] if self.newline_id is not None else [[t] for t in texts]
        ids = self.sp.encode([u for parts in units for u in parts])
        n_units = np.fromiter((len(parts) for parts in units), dtype=np.int64, count=len(units))
        unit_len = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))  # + separator
        total = int(unit_len.sum())
        seps = np.full(len(ids), -1 if self.newline_id is None else self.newline_id, dtype=np.int64)
        seps[np.cumsum(n_units) - 1] = self.eos_id  # the last unit of a document ends with EOS
        out = np.empty(total, dtype=dtype)
        is_sep = np.zeros(total, dtype=bool)
        is_sep[np.cumsum(unit_len) - 1] = True
        out[is_sep] = seps
        out[~is_sep] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total - len(ids))
        starts = np.concatenate([[0], np.cumsum(n_units)[:-1]]).astype(np.int64)
        lengths = np.add.reduceat(unit_len, starts) if len(ids) else np.zeros(0, dtype=np.int64)
        return out, lengths

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_file!r}, vocab_size={self.vocab_size})"


def _newline_byte_id(model_file: str, sp) -> int | None:
    """The id of <0x0A> when a newline can only ever be that byte piece (so lines encode independently), else None.
    Reads the model's normalizer spec through SentencePiece's protobuf module; None when that is unavailable."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(Path(model_file).read_bytes())
    except Exception:  # no protobuf runtime: take the always-correct whole-document path
        return None
    ns = m.normalizer_spec
    plain = ns.name == "identity" and not ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    if not plain or m.trainer_spec.model_type != pb.TrainerSpec.BPE or any("\n" in p.piece for p in m.pieces):
        return None
    nl = sp.piece_to_id("<0x0A>")
    return nl if sp.is_byte(nl) else None


def load_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a prepared data dir (or a path to a .model file)."""
    path = Path(data_dir)
    model = path if path.is_file() else path / MODEL_FILE
    if not model.is_file():
        raise DataError(f"no tokenizer at {model}; run scripts/prepare_data.py first")
    return Tokenizer(model)


def hf_tokenizer_dir(data_dir: str | os.PathLike) -> Path:
    """Folder with the Hugging Face tokenizer files of a prepared data dir (AutoTokenizer.from_pretrained loads it)."""
    path = Path(data_dir) / HF_DIR
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"no Hugging Face tokenizer in {path}; run scripts/prepare_data.py first")
    return path


def build_hf_tokenizer(model_file: str | os.PathLike):
    """A `tokenizers.Tokenizer` giving the same ids as the SentencePiece model: the BPE vocab, merges ranked by
    piece score (SentencePiece merges the best-scoring adjacent pair, as BPE does with the lowest merge rank), spaces
    escaped to U+2581, byte fallback."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, normalizers
    from tokenizers.models import BPE

    sp = Tokenizer(model_file).sp
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {sp.id_to_piece(i): (sp.get_score(i), i) for i in range(n)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    merges = [(left, right) for _, _, left, right in sorted(ranked)]
    tok = HFTokenizer(BPE(vocab=vocab, merges=merges, unk_token=SPECIALS["unk"], fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def save_hf_tokenizer(model_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the Hugging Face form (tokenizer.json + tokenizer_config.json + special_tokens_map, and the
    SentencePiece model) to out_dir, replacing it atomically."""
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=build_hf_tokenizer(model_file),
            unk_token=SPECIALS["unk"], bos_token=SPECIALS["bos"], eos_token=SPECIALS["eos"],
            pad_token=SPECIALS["pad"], clean_up_tokenization_spaces=False, split_special_tokens=True,
        )
        fast.save_pretrained(str(tmp))
        _check_json(tmp / "tokenizer.json")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_json(path: Path) -> None:
    with open(path, encoding="utf-8") as f:
        json.load(f)
