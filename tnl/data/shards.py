"""Token shard files of one split: raw uint16/uint32 tokens plus the end offset of each document (.docs.npy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardWriter:
    """Appends token batches to shard files of one split; a new shard starts past `shard_tokens`."""

    def __init__(self, split_dir: Path, dtype: np.dtype, shard_tokens: int):
        self.dir, self.dtype, self.limit = split_dir, dtype, shard_tokens
        self.shards: list[dict] = []
        self.f = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.f is None or self.shards[-1]["tokens"] >= self.limit:
            self._open()
        self.f.write(tokens.tobytes())
        cur = self.shards[-1]
        cur["tokens"] += int(tokens.size)
        cur["_lengths"].append(lengths)

    def _open(self) -> None:
        self.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(self.shards):05d}"
        self.shards.append({"path": f"{self.dir.name}/{name}.bin", "tokens": 0, "_lengths": []})
        self.f = open(self.dir / f"{name}.bin", "wb")

    def close(self) -> dict:
        """Close the open shard (writing its .docs.npy) and return {tokens, docs, shards} of the split so far."""
        if self.f is not None:
            self.f.close()
            self.f = None
            cur = self.shards[-1]
            ends = np.cumsum(np.concatenate(cur.pop("_lengths")))
            np.save(self.dir / Path(cur["path"]).name.replace(".bin", ".docs.npy"), ends)
            cur["docs"] = int(ends.size)
        tokens = sum(s["tokens"] for s in self.shards)
        docs = sum(s.get("docs", 0) for s in self.shards)
        return {"tokens": tokens, "docs": docs, "shards": self.shards}
