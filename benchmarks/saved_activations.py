"""Bytes one TNL block keeps for backward per token: eager, compiled, compiled with model.recompute_elementwise.

Runs on CPU (no GPU needed): bf16 autocast like training, the blocks compiled with the `aot_eager_decomp_partition`
backend, which hands AOTAutograd the decompositions and the min-cut partitioner inductor uses, without generating
code. Every tensor saved for backward is recorded by storage (views counted once, parameters left out); the
difference between two context lengths gives the per-token bytes (weight casts do not scale with tokens), which
are projected to all layers at a number of tokens per step. The LA2 op runs on the torch backend here, so the eager
row includes the reference's own intermediates (the Triton autograd Function keeps only q, k, v): compare the
compiled rows, where LA2 is one custom op keeping its inputs. Writes
benchmarks/results/training/saved_activations_<model>_layer<l>[_<tag>]_cpu_<time>.json and .md through results_io.

    python benchmarks/saved_activations.py --model tnl_385m --tokens 32768
"""

import argparse

import results_io  # beside this program
import torch
from bench_models import label, load_model_cfg


def saved_bytes(block, B: int, T: int) -> int:
    x = torch.randn(B, T, block.token_mixer.out_proj.in_features, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    slope = block.token_mixer.slope(x.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x, torch.arange(T), slope=slope)[0]
    y.float().square().sum().backward()
    return sum(storages.values())


def per_token(block, B: int, T: int) -> float:
    a, b = saved_bytes(block, B, T), saved_bytes(block, B, 2 * T)
    return (b - a) / (B * T)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tnl_385m", help="configs/model/<name>.yaml (arch tnl)")
    p.add_argument("--layer", type=int, default=1, help="which layer's block (0 is the LRPE layer)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step for the projection")
    p.add_argument("--seq", type=int, default=192, help="context of the measurement (and twice it)")
    p.add_argument("--out", default=str(results_io.topic_dir("training")),
                   help="output folder (default benchmarks/results/training)")
    p.add_argument("--tag", default="", help="appended to what the file names say was measured")
    a = p.parse_args(argv)
    try:
        cfg = load_model_cfg(a.model)
    except ValueError as err:
        p.error(str(err))
    if cfg.get("arch") != "tnl":
        p.error(f"--model {a.model}: a TNL model is needed (arch tnl), got arch {cfg.get('arch')!r}")
    facts = results_io.run_facts("benchmarks/saved_activations.py", argv, "cpu")
    import torch._dynamo

    from tnl.models.config import ModelArgs
    from tnl.models.tnl import TnlBlock

    rows, table = [], []
    for name, compiled, recompute in (("eager", False, False), ("compiled", True, False),
                                      ("compiled + recompute_elementwise", True, True)):
        torch.manual_seed(0)
        block = TnlBlock(ModelArgs.from_mapping(dict(cfg, recompute_elementwise=recompute)), a.layer)
        if compiled:
            torch._dynamo.reset()
            block.compile(backend="aot_eager_decomp_partition")
        b = per_token(block, 2, a.seq)
        total = b * cfg["num_hidden_layers"] * a.tokens / 2**30
        rows.append({"mode": name, "bytes_per_token_layer": b, "gib_per_step": total})
        table.append(f"| {name} | {b:,.0f} | {total:.2f} |")
        print(table[-1], flush=True)
    meta = {**facts, "model": a.model, "layer": a.layer, "tokens": a.tokens, "seq": a.seq,
            "precision": "bf16 autocast", "backend": "aot_eager_decomp_partition"}
    lines = [f"# Bytes a TNL block saves for backward: {a.model}, layer {a.layer} (CPU)", "",
             f"bf16 autocast, torch {facts['torch']}; per-token bytes from contexts {a.seq} and {2 * a.seq}. "
             f"Command: `{facts['command']}`", "",
             "| mode | saved bytes per token and layer | "
             f"GiB at {a.tokens} tokens x {cfg['num_hidden_layers']} layers |",
             "|---|---|---|", *table]
    results_io.write(a.out, f"saved_activations_{label(a.model)}_layer{a.layer}", meta, {"rows": rows}, lines, a.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
