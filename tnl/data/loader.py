"""PackedLoader: fixed-length training samples from memory-mapped token shards, resumable, rank-sharded, mixable.

A shard is one stream of documents, each followed by EOS. Sample j of a shard is the window of seq_len + 1 tokens
starting at j * seq_len (inputs = window[:-1], targets = window[1:]), so consecutive samples share one token and
documents are packed back to back. Training order: each epoch of a dataset is a permutation of its samples drawn
from (seed, dataset, epoch). The samples of one optimizer step form a global batch of world_size * micro_batch_size
slots; rank r takes slots [r * B, (r + 1) * B). The whole position is a few integers (global slot count and, per
dataset, samples consumed), identical on every rank, so state_dict() resumes exactly and epochs never overlap
between ranks. With several datasets, each slot's dataset is drawn with the given weights from (seed, step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tnl.data.config import DataError

STATE_VERSION = 1


class _Packed:
    """One split of one prepared dir: memory-mapped shards and the sample -> (shard, offset) arithmetic."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int):
        self.dir = Path(data_dir)
        try:
            manifest = json.loads((self.dir / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise DataError(f"{self.dir} is not a prepared data dir (no manifest.json); run prepare first") from None
        if split not in manifest["splits"]:
            raise DataError(f"{self.dir} has no {split!r} split (set data.val_fraction or data.val_inputs)")
        self.manifest = manifest
        self.eos_id = int(manifest["tokenizer"]["eos_id"])
        self.vocab_size = int(manifest["tokenizer"]["vocab_size"])
        self.tokenizer_sha = manifest["tokenizer"]["sha256"]
        self.dtype = np.dtype(manifest["dtype"])
        self.seq_len = seq_len
        self.shards = manifest["splits"][split]["shards"]
        per_shard = [max(0, (s["tokens"] - 1) // seq_len) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)
        self.num_samples = int(self.starts[-1])
        self.num_tokens = int(sum(s["tokens"] for s in self.shards))
        if self.num_samples == 0:
            raise DataError(f"{self.dir} {split} split has {self.num_tokens} tokens: not one sample of "
                            f"seq_len + 1 = {seq_len + 1} tokens")
        self._maps: dict[int, np.memmap] = {}

    def _map(self, k: int) -> np.memmap:
        if k not in self._maps:
            self._maps[k] = np.memmap(self.dir / self.shards[k]["path"], dtype=self.dtype, mode="r",
                                      shape=(self.shards[k]["tokens"],))
        return self._maps[k]

    def window(self, i: int) -> np.ndarray:
        """The seq_len + 1 tokens of sample i (int64)."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = (i - int(self.starts[k])) * self.seq_len
        return np.asarray(self._map(k)[j : j + self.seq_len + 1], dtype=np.int64)


def _as_sources(data_dir, weights) -> tuple[list[Path], np.ndarray]:
    if isinstance(data_dir, Mapping):
        if weights is not None:
            raise ValueError("give weights either in the data_dir mapping or as weights=, not both")
        dirs, weights = list(data_dir.keys()), list(data_dir.values())
    elif isinstance(data_dir, (str, os.PathLike)):
        dirs = [data_dir]
    elif isinstance(data_dir, Sequence) and data_dir:
        dirs = list(data_dir)
    else:
        raise TypeError(f"data_dir must be a path, a list of paths or a {{path: weight}} mapping, got {data_dir!r}")
    w = np.ones(len(dirs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(dirs),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(dirs)} non-negative numbers with a positive sum, got {weights!r}")
    return [Path(d) for d in dirs], w / w.sum()


class PackedLoader:
    """Batches {input_ids, targets[, cu_seqlens]} of packed documents.

    data_dir: a prepared dir, a list of them (mixed equally, or by `weights`), or a {dir: weight} mapping.
    split "train": an endless, shuffled stream (epochs follow each other); "val": every validation sample once,
    in order, each rank a disjoint equal share (the last batch may be smaller), finite and deterministic.
    input_ids, targets: (B, T) int64, targets = next token. cu_seqlens (with cu_seqlens=True): int32 boundaries of
    the documents of the batch flattened to (1, B*T); every sample start is a boundary, and so is every position
    right after an EOS.
    """

    def __init__(self, data_dir, split: str = "train", seq_len: int = 256, micro_batch_size: int = 8, *,
                 rank: int = 0, world_size: int = 1, seed: int = 0, cu_seqlens: bool = False, weights=None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        for name, v in (("seq_len", seq_len), ("micro_batch_size", micro_batch_size), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        dirs, self.weights = _as_sources(data_dir, weights)
        self.datasets = [_Packed(d, split, seq_len) for d in dirs]
        if len({d.tokenizer_sha for d in self.datasets}) > 1:
            raise DataError("mixed datasets must share one tokenizer: " + ", ".join(str(d) for d in dirs))
        self.split, self.seq_len, self.micro_batch_size = split, seq_len, micro_batch_size
        self.rank, self.world_size, self.seed, self.cu_seqlens = rank, world_size, int(seed), cu_seqlens
        self.eos_id = self.datasets[0].eos_id
        self.vocab_size = self.datasets[0].vocab_size
        self._step = 0  # optimizer steps consumed (global batches)
        self._position = 0  # global slots consumed
        self._counts = [0] * len(self.datasets)  # samples consumed per dataset, by all ranks
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    # ------------------------------------------------------------------ state
    @property
    def epoch(self) -> int:
        """Epochs completed of the first dataset (the only one when there is no mixture)."""
        return self._counts[0] // self.datasets[0].num_samples

    def state_dict(self) -> dict[str, Any]:
        epochs = [c // d.num_samples for c, d in zip(self._counts, self.datasets)]
        return {"version": STATE_VERSION, "step": self._step, "position": self._position,
                "counts": list(self._counts), "epochs": epochs,
                "seed": self.seed, "seq_len": self.seq_len, "weights": self.weights.tolist(),
                "num_samples": [d.num_samples for d in self.datasets], "fingerprints": self.fingerprints}

    @property
    def fingerprints(self) -> list[str | None]:
        """The manifest fingerprint of each prepared dir: which inputs, tokenizer and settings its shards hold."""
        return [d.manifest.get("fingerprint") for d in self.datasets]

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        for key in ("seed", "seq_len"):
            if sd.get(key) != getattr(self, key):
                raise DataError(f"loader state has {key}={sd.get(key)!r}, this loader {getattr(self, key)!r}")
        old = sd.get("fingerprints")  # absent in states saved before it was recorded
        if old is not None and list(old) != self.fingerprints:
            changed = [str(d.dir) for d, a, b in zip(self.datasets, old, self.fingerprints) if a != b]
            raise DataError(f"the data changed since this state was saved: {', '.join(changed) or 'the mixture'} "
                            "now holds shards of other inputs or settings (a changed dataset, file or data option); "
                            "resume on the same data, or start a new run_dir")
        if sd.get("num_samples") != [d.num_samples for d in self.datasets] or len(sd["counts"]) != len(self._counts):
            raise DataError("loader state was saved for different data (sample counts differ); cannot resume")
        if not np.allclose(sd.get("weights", []), self.weights):
            raise DataError("loader state was saved with other mixture weights; cannot resume exactly")
        self._step, self._position, self._counts = int(sd["step"]), int(sd["position"]), [int(c) for c in sd["counts"]]

    # ------------------------------------------------------------------ sample order
    def _perm(self, d: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(d)
        if cached is None or cached[0] != epoch:  # one epoch's permutation per dataset is kept
            n = self.datasets[d].num_samples
            rng = np.random.default_rng([self.seed, d, epoch])
            cached = self._perm_cache[d] = (epoch, rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64))
        return cached[1]

    def _sample_id(self, d: int, index: int) -> int:
        n = self.datasets[d].num_samples
        return int(self._perm(d, index // n)[index % n])

    def _step_slots(self) -> list[tuple[int, int]]:
        """(dataset, sample) of this rank's B slots in the current step; advances the global position."""
        slots = self.world_size * self.micro_batch_size
        if len(self.datasets) == 1:
            choice = np.zeros(slots, dtype=np.int64)
        else:
            rng = np.random.default_rng([self.seed, 0x6D6978, self._step])
            choice = rng.choice(len(self.datasets), size=slots, p=self.weights)
        ranks = np.empty(slots, dtype=np.int64)  # index of each slot within its dataset's stream
        for d in range(len(self.datasets)):
            where = np.flatnonzero(choice == d)
            ranks[where] = self._counts[d] + np.arange(where.size)
            self._counts[d] += where.size
        lo = self.rank * self.micro_batch_size
        mine = [(int(choice[k]), self._sample_id(int(choice[k]), int(ranks[k])))
                for k in range(lo, lo + self.micro_batch_size)]
        self._step += 1
        self._position += slots
        return mine

    # ------------------------------------------------------------------ batches
    def _batch(self, slots: list[tuple[int, int]]) -> dict[str, Any]:
        import torch

        win = np.stack([self.datasets[d].window(i) for d, i in slots])
        batch = {"input_ids": torch.from_numpy(np.ascontiguousarray(win[:, :-1])),
                 "targets": torch.from_numpy(np.ascontiguousarray(win[:, 1:]))}
        if self.cu_seqlens:
            batch["cu_seqlens"] = torch.from_numpy(cu_seqlens_of(win[:, :-1], self.eos_id))
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.split == "val":
            return self._val_batches()
        return self._train_batches()

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self._batch(self._step_slots())

    def _val_slots(self) -> list[tuple[int, int]]:
        every = [(d, i) for d, ds in enumerate(self.datasets) for i in range(ds.num_samples)]
        share = len(every) // self.world_size
        if share == 0:
            raise DataError(f"the val split has {len(every)} samples of {self.seq_len + 1} tokens: fewer than "
                            f"world_size={self.world_size}")
        return every[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        if self.split != "val":
            raise TypeError("a train PackedLoader is endless; len() is defined for split='val'")
        return -(-len(self._val_slots()) // self.micro_batch_size)

    def _val_batches(self) -> Iterator[dict[str, Any]]:
        slots = self._val_slots()
        for lo in range(0, len(slots), self.micro_batch_size):
            yield self._batch(slots[lo : lo + self.micro_batch_size])


def cu_seqlens_of(input_ids: np.ndarray, eos_id: int) -> np.ndarray:
    """int32 document boundaries of a (B, T) batch flattened to B*T: 0, each sample start, each position after
    an EOS, and B*T."""
    b, t = input_ids.shape
    flat = np.asarray(input_ids).reshape(-1)
    after_eos = np.flatnonzero(flat == eos_id) + 1
    cuts = np.concatenate([np.arange(0, b * t + 1, t), after_eos[after_eos < b * t]])
    return np.unique(cuts).astype(np.int32)
