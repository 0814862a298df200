"""PackedLoader on hand-made prepared dirs (random tokens, EOS placed by the test): determinism, exact resume,
disjoint rank shards, mixture proportions, cu_seqlens against a slow reference, the finite val iterator."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tnl.data import DataError, PackedLoader, cu_seqlens_of

EOS = 2


def fake_dir(root: Path, name: str, shard_tokens: list[int], seed: int, val_tokens: int = 0,
             tokenizer_sha: str = "t", dtype: str = "uint16", eos_every: int = 37) -> Path:
    """A prepared dir as prepare() writes it: shards of random non-special tokens with EOS at random places."""
    rng = np.random.default_rng(seed)
    d = root / name
    splits = {}
    for split, sizes in (("train", shard_tokens), ("val", [val_tokens] if val_tokens else [])):
        if not sizes:
            continue
        (d / split).mkdir(parents=True)
        shards = []
        for k, n in enumerate(sizes):
            toks = rng.integers(4, 60000, size=n).astype(dtype)
            toks[rng.random(n) < 1.0 / eos_every] = EOS
            toks[-1] = EOS
            path = f"{split}/shard-{k:05d}.bin"
            toks.tofile(d / path)
            shards.append({"path": path, "tokens": n, "docs": int((toks == EOS).sum())})
        splits[split] = {"tokens": sum(sizes), "docs": sum(s["docs"] for s in shards), "shards": shards}
    manifest = {"dtype": dtype, "splits": splits,
                "tokenizer": {"eos_id": EOS, "vocab_size": 60000, "sha256": tokenizer_sha}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def all_windows(loader: PackedLoader, d: int = 0) -> dict[bytes, int]:
    ds = loader.datasets[d]
    return {ds.window(i).tobytes(): i for i in range(ds.num_samples)}


def sample_ids(batch, windows) -> list[int]:
    win = torch.cat([batch["input_ids"], batch["targets"][:, -1:]], dim=1).numpy()
    return [windows[w.tobytes()] for w in win]


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_batches_shapes_shift_and_determinism(tmp_path):
    d = fake_dir(tmp_path, "a", [5000, 3001], seed=1)
    a = take(PackedLoader(d, "train", 64, 4, seed=7), 20)
    b = take(PackedLoader(d, "train", 64, 4, seed=7), 20)
    c = take(PackedLoader(d, "train", 64, 4, seed=8), 20)
    assert same(a, b) and not same(a, c)
    x = a[0]
    assert x["input_ids"].shape == (4, 64) and x["input_ids"].dtype == torch.int64
    assert torch.equal(x["input_ids"][:, 1:], x["targets"][:, :-1])
    # every window is a contiguous slice of its shard
    raw = [np.fromfile(d / f"train/shard-0000{k}.bin", dtype=np.uint16) for k in range(2)]
    loader = PackedLoader(d, "train", 64, 4, seed=7)
    assert loader.datasets[0].num_samples == (5000 - 1) // 64 + (3001 - 1) // 64
    for i in (0, 77, 78, 123):
        k, j = (0, i) if i < 78 else (1, i - 78)
        np.testing.assert_array_equal(loader.datasets[0].window(i), raw[k][j * 64 : j * 64 + 65])


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    d = fake_dir(tmp_path, "a", [4000], seed=2)
    full = take(PackedLoader(d, "train", 32, 3, seed=5, cu_seqlens=True), 100)  # 124 samples: crosses epochs
    first = PackedLoader(d, "train", 32, 3, seed=5, cu_seqlens=True)
    it = iter(first)
    head = [next(it) for _ in range(29)]
    sd = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip (checkpoint metadata)
    resumed = PackedLoader(d, "train", 32, 3, seed=5, cu_seqlens=True)
    resumed.load_state_dict(sd)
    tail = take(resumed, 71)
    assert same(full, head + tail)
    assert sd["position"] == 29 * 3 and sd["epochs"] == [87 // 124]
    other = PackedLoader(d, "train", 32, 3, seed=6)
    with pytest.raises(DataError, match="seed"):
        other.load_state_dict(sd)


@pytest.mark.parametrize("world,batch,n_tokens", [(3, 2, 36 * 16 + 1), (4, 3, 50 * 16 + 1)])
def test_rank_shards_disjoint_and_cover_each_epoch(tmp_path, world, batch, n_tokens):
    d = fake_dir(tmp_path, "a", [n_tokens], seed=3)
    loaders = [PackedLoader(d, "train", 16, batch, rank=r, world_size=world, seed=11) for r in range(world)]
    n = loaders[0].datasets[0].num_samples
    windows = all_windows(loaders[0])
    steps = -(-3 * n // (world * batch))  # at least three epochs of global slots
    stream = []  # global slot order: step by step, rank by rank
    its = [iter(lo) for lo in loaders]
    for _ in range(steps):
        per_rank = [sample_ids(next(it), windows) for it in its]
        step_ids = [i for ids in per_rank for i in ids]
        stream += step_ids
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n)), f"epoch {e} does not cover every sample once"
    assert stream[:n] != list(range(n))  # shuffled


def test_mixture_proportions_and_resume(tmp_path):
    a = fake_dir(tmp_path, "a", [20000], seed=4)
    b = fake_dir(tmp_path, "b", [9000], seed=5)
    lo = PackedLoader({a: 3.0, b: 1.0}, "train", 16, 8, seed=1)
    wa, wb = all_windows(lo, 0), all_windows(lo, 1)
    counts = [0, 0]
    for batch in take(lo, 250):
        win = torch.cat([batch["input_ids"], batch["targets"][:, -1:]], dim=1).numpy()
        for w in win:
            key = w.tobytes()
            assert (key in wa) != (key in wb)
            counts[key in wb] += 1
    frac = counts[0] / sum(counts)  # 2000 draws: sd of the fraction ~0.0097
    assert abs(frac - 0.75) < 0.04, frac
    assert lo.state_dict()["counts"] == counts
    # resuming a mixture is exact too
    ref = take(PackedLoader([a, b], "train", 16, 2, seed=3, weights=[1, 2]), 30)
    first = PackedLoader([a, b], "train", 16, 2, seed=3, weights=[1, 2])
    head = take(first, 12)
    second = PackedLoader([a, b], "train", 16, 2, seed=3, weights=[1, 2])
    second.load_state_dict(first.state_dict())
    assert same(ref, head + take(second, 18))


def test_mixture_needs_one_tokenizer(tmp_path):
    a = fake_dir(tmp_path, "a", [2000], seed=4, tokenizer_sha="x")
    b = fake_dir(tmp_path, "b", [2000], seed=5, tokenizer_sha="y")
    with pytest.raises(DataError, match="tokenizer"):
        PackedLoader([a, b], "train", 16, 2)


def slow_cu_seqlens(input_ids: np.ndarray) -> list[int]:
    b, t = input_ids.shape
    cuts = [0]
    for r in range(b):
        for p in range(t):
            pos = r * t + p
            if pos > 0 and (p == 0 or input_ids[r, p - 1] == EOS) and cuts[-1] != pos:
                cuts.append(pos)
    return cuts + [b * t]


def test_cu_seqlens_matches_reference(tmp_path):
    d = fake_dir(tmp_path, "a", [6000], seed=6, eos_every=9)
    for batch in take(PackedLoader(d, "train", 24, 5, seed=2, cu_seqlens=True), 12):
        cu = batch["cu_seqlens"]
        assert cu.dtype == torch.int32
        assert cu.tolist() == slow_cu_seqlens(batch["input_ids"].numpy())
    # an EOS in the last position of a sample: the next sample start is one boundary, not two
    ids = np.array([[5, 6, EOS], [7, EOS, 8]])
    assert cu_seqlens_of(ids, EOS).tolist() == [0, 3, 5, 6]


def test_val_iterator_finite_deterministic_disjoint(tmp_path):
    d = fake_dir(tmp_path, "a", [3000], seed=7, val_tokens=1001)
    one = list(PackedLoader(d, "val", 16, 4))
    assert len(one) == len(PackedLoader(d, "val", 16, 4)) == 16  # 62 samples -> 15 full batches + 2
    assert same(one, list(PackedLoader(d, "val", 16, 4))) and one[-1]["input_ids"].shape == (2, 16)
    lo = PackedLoader(d, "val", 16, 4)
    windows = all_windows(lo)
    assert [i for b in one for i in sample_ids(b, windows)] == list(range(62))  # every sample once, in order
    shares = [[i for b in PackedLoader(d, "val", 16, 4, rank=r, world_size=3) for i in sample_ids(b, windows)]
              for r in range(3)]
    assert [len(s) for s in shares] == [20, 20, 20]
    assert sorted(sum(shares, [])) == list(range(60))


def test_loader_bad_arguments(tmp_path):
    d = fake_dir(tmp_path, "a", [300], seed=8)
    with pytest.raises(DataError, match="no 'val' split"):
        PackedLoader(d, "val", 16, 2)
    with pytest.raises(DataError, match="not one sample"):
        PackedLoader(d, "train", 400, 2)
    with pytest.raises(DataError, match="not a prepared data dir"):
        PackedLoader(tmp_path / "nothing", "train", 16, 2)
    with pytest.raises(ValueError, match="rank"):
        PackedLoader(d, "train", 16, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="split"):
        PackedLoader(d, "test", 16, 2)
    with pytest.raises(ValueError, match="weights"):
        PackedLoader([d, d], "train", 16, 2, weights=[1, -1])
