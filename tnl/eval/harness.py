"""Log-likelihood scoring of (context, continuation) pairs and the task metrics built on it, fully offline.

    scores = loglikelihoods(lm, pairs)      # [(sum log p(continuation | context), greedy?)] in the order given
    result = evaluate_task(lm, "piqa", root, limit=0)      # {"acc": .., "acc_norm": .., "n": ..}

Tokenization as lm-evaluation-harness does it: the context is encoded alone and the pair whole; the continuation's
tokens are the whole's tokens past the context's. By default every sequence starts with EOS, the token that precedes
every document in training (documents are EOS-separated), so a context reads as the start of a document;
prefix_eos=False scores exactly as lm-eval's HF model does for these tokenizers (no prefix). Sequences longer
than max_len keep their last max_len tokens. Requests are sorted by length and right-padded into batches: the models
are causal, so padding after a sequence cannot change its log-probabilities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from tnl.eval.lm import EvalError, EvalLM
from tnl.eval.tasks import TASKS, load_docs


def encode_pair(lm: EvalLM, context: str, continuation: str, max_len: int,
                prefix_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of [EOS] + context + continuation (at most max_len + 1, the oldest dropped) and the number of
    continuation tokens at its end. As lm-eval does: trailing whitespace of the context moves onto the
    continuation, and the continuation's tokens are those of the whole past the context's."""
    if lm.tokenizer is None:
        raise EvalError("this model came without a tokenizer: tasks need one")
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    prefix = [int(lm.eos_id)] if prefix_eos and lm.eos_id is not None else []
    ctx = prefix + lm.tokenizer.encode(stripped)
    whole = prefix + lm.tokenizer.encode(stripped + continuation)
    n_cont = len(whole) - len(ctx)
    if n_cont <= 0:  # the continuation merged into the context's last token: encode the two parts separately
        whole = ctx + lm.tokenizer.encode(continuation)
        n_cont = len(whole) - len(ctx)
    if n_cont <= 0:
        raise EvalError(f"continuation {continuation!r} encodes to no tokens")
    if len(whole) < 2:
        raise EvalError(f"request {context!r} + {continuation!r} has fewer than 2 tokens (no EOS prefix to condition "
                        "on)")
    whole = whole[-(max_len + 1):]
    return whole, min(n_cont, len(whole) - 1)


@torch.no_grad()
def loglikelihoods(lm: EvalLM, pairs: Sequence[tuple[str, str]], batch_size: int = 16, max_len: int = 2048,
                   progress: bool = True, desc: str = "score", prefix_eos: bool = True) -> list[tuple[float, bool]]:
    """(log-likelihood of the continuation given the context, whether greedy decoding would produce it) per pair."""
    from tqdm import tqdm

    encoded = [encode_pair(lm, c, x, max_len, prefix_eos) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[tuple[float, bool] | None] = [None] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, unit="req", disable=not progress, dynamic_ncols=True)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        width = len(encoded[idx[0]][0]) - 1
        ids = torch.zeros(len(idx), width, dtype=torch.int64)
        for r, i in enumerate(idx):
            toks = encoded[i][0]
            ids[r, :len(toks) - 1] = torch.tensor(toks[:-1])
        logits = lm.logits(ids)
        for r, i in enumerate(idx):
            toks, n = encoded[i]
            end = len(toks) - 1
            logp = torch.log_softmax(logits[r, end - n:end].double(), dim=-1)
            target = torch.tensor(toks[-n:], device=logp.device)
            ll = float(logp.gather(-1, target[:, None]).sum())
            greedy = bool((logp.argmax(-1) == target).all())
            out[i] = (ll, greedy)
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def task_metrics(name: str, docs, scores: list[tuple[float, bool]]) -> dict:
    """acc / acc_norm (or LAMBADA's acc + perplexity) from the per-pair scores, in the order of the docs' pairs."""
    task = TASKS[name]
    if "perplexity" in task.metrics:  # one pair per doc: acc = greedy match, ppl = exp(-mean loglik)
        lls = [s[0] for s in scores]
        acc = sum(s[1] for s in scores) / len(scores)
        return {"acc": acc, "perplexity": math.exp(min(-sum(lls) / len(lls), 700.0)), "n": len(scores)}
    correct, correct_norm, k = 0, 0, 0
    for doc in docs:
        lls = [s[0] for s in scores[k:k + len(doc.pairs)]]
        k += len(doc.pairs)
        correct += int(max(range(len(lls)), key=lambda j: lls[j]) == doc.gold)
        normed = [ll / max(n, 1) for ll, n in zip(lls, doc.norm_lens)]
        correct_norm += int(max(range(len(normed)), key=lambda j: normed[j]) == doc.gold)
    result = {"acc": correct / len(docs)}
    if "acc_norm" in task.metrics:
        result["acc_norm"] = correct_norm / len(docs)
    result["n"] = len(docs)
    return result


def evaluate_task(lm: EvalLM, name: str, root=None, limit: int = 0, batch_size: int = 16, max_len: int = 2048,
                  progress: bool = True, path=None, prefix_eos: bool = True) -> dict:
    """Load a task's local file, score every pair, return its metrics (+ n and seconds)."""
    docs = load_docs(name, root, limit, path)
    pairs = [p for d in docs for p in d.pairs]
    t0 = time.perf_counter()
    scores = loglikelihoods(lm, pairs, batch_size, max_len, progress, desc=name, prefix_eos=prefix_eos)
    result = task_metrics(name, docs, scores)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
