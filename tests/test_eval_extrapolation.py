"""tnl.eval.extrapolation: the loss at several contexts over the same disjoint windows, against a float64 reference
of the model's logits and against heldout_loss (the training model's own chunked loss) on the same windows; the
position split adds up; bad contexts fail with one message."""

import json
import math

import numpy as np
import pytest
import torch

from tnl.eval.extrapolation import context_sweep, parse_contexts, scored_tokens, val_stream
from tnl.eval.heldout import heldout_loss
from tnl.eval.lm import EvalError, EvalLM
from tnl.models import build_model


def tiny_lm(arch: str, seed: int) -> EvalLM:
    torch.manual_seed(seed)
    cfg = dict(arch=arch, vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=40)
    model = build_model(cfg).eval()
    return EvalLM(model, "checkpoint", torch.device("cpu"), torch.float32)


def reference(model, stream: np.ndarray, context: int, n: int) -> tuple[float, np.ndarray]:
    """Float64 NLL of every target of the disjoint windows, and the mean (a direct, unbatched computation)."""
    nll = []
    with torch.no_grad():
        for lo in range(0, n, context):
            ids = torch.from_numpy(stream[lo:lo + context])[None]
            tgt = torch.from_numpy(stream[lo + 1:lo + context + 1])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            nll.append(-logp.gather(-1, tgt[:, None])[:, 0].numpy())
    per_token = np.concatenate(nll)
    return float(per_token.mean()), per_token


@pytest.mark.parametrize("arch", ["tnl", "llama"])
def test_sweep_matches_reference_and_heldout(arch):
    seed = 11 if arch == "tnl" else 12
    lm = tiny_lm(arch, seed)
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 53, size=437).astype(np.int64)  # awkward length: 437 - 1 = 436 -> N = 384 (lcm 96)
    contexts = [24, 32, 96]
    sweep = context_sweep(lm, stream, contexts, tokens_per_batch=50, progress=False)
    assert sweep["windows"] == "disjoint" and sweep["tokens"] == 384 and sweep["position_edges"] == [0, 24, 32, 96]
    for res, L in zip(sweep["results"], contexts):
        assert res["context"] == L and res["tokens"] == 384 and res["windows"] == 384 // L
        ref, per_token = reference(lm.model, stream, L, 384)
        assert res["loss"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
        assert res["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
        # the position split: token counts and weighted losses add up to the whole, each bucket is its positions
        parts = res["by_position"]
        assert sum(p["tokens"] for p in parts) == 384 and parts[-1]["to"] == L
        assert sum(p["loss"] * p["tokens"] for p in parts) / 384 == pytest.approx(res["loss"], rel=1e-9)
        pos = np.arange(384) % L
        for p in parts:
            sel = (pos >= p["from"]) & (pos < p["to"])
            assert p["tokens"] == int(sel.sum())
            assert p["loss"] == pytest.approx(float(per_token[sel].mean()), rel=1e-5, abs=1e-6)
        # an independent computation: the training model's own chunked loss on the same windows
        data = torch.from_numpy(stream[:385])
        batches = [{"input_ids": data[:-1].view(-1, L), "targets": data[1:].view(-1, L)}]
        assert heldout_loss(lm, batches, progress=False)["loss"] == pytest.approx(res["loss"], rel=1e-5)


def test_max_tokens_and_errors():
    assert scored_tokens(1000, [16, 64]) == 960 and scored_tokens(1000, [16, 64], max_tokens=200) == 192
    assert scored_tokens(65, [64]) == 64
    with pytest.raises(EvalError, match="fewer than the 65 needed"):
        scored_tokens(64, [16, 64])
    assert parse_contexts("2K, 512,1k,16384,512") == [512, 1024, 2048, 16384]
    for bad in ("", "a,2", "0", "-4"):
        with pytest.raises(EvalError):
            parse_contexts(bad)
    lm = tiny_lm("tnl", 0)
    with pytest.raises(EvalError, match="tokens_per_batch"):
        context_sweep(lm, np.zeros(100, dtype=np.int64), [8], tokens_per_batch=0)


def test_val_stream_reads_every_shard(tmp_path):
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 1000, size=n).astype(np.uint16) for n in (17, 5)]
    (tmp_path / "val").mkdir()
    shards = []
    for i, p in enumerate(parts):
        p.tofile(tmp_path / "val" / f"shard-{i:05d}.bin")
        shards.append({"path": f"val/shard-{i:05d}.bin", "tokens": int(p.size)})
    (tmp_path / "manifest.json").write_text(json.dumps({"dtype": "uint16", "splits": {"val": {"shards": shards}}}))
    got = val_stream(tmp_path)
    assert got.dtype == np.int64 and got.tolist() == np.concatenate(parts).astype(np.int64).tolist()
    shards[1]["tokens"] = 6  # the index claims more than the file holds
    (tmp_path / "manifest.json").write_text(json.dumps({"dtype": "uint16", "splits": {"val": {"shards": shards}}}))
    with pytest.raises(EvalError, match="holds 5 tokens"):
        val_stream(tmp_path)
    with pytest.raises(EvalError, match="no readable manifest"):
        val_stream(tmp_path / "val")
