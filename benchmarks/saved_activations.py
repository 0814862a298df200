"""Bytes one TNL block keeps for backward per token: eager, compiled, compiled with model.recompute_elementwise.

Runs on CPU (no GPU needed): bf16 autocast like training, the blocks compiled with the `aot_eager_decomp_partition`
backend, which hands AOTAutograd the decompositions and the min-cut partitioner inductor uses, without generating
code. Every tensor saved for backward is recorded by storage (views counted once, parameters left out); the
difference between two context lengths gives the per-token bytes (weight casts do not scale with tokens), which
are projected to all layers at a number of tokens per step. The LA2 op runs on the torch backend here, so the eager
row includes the reference's own intermediates (the Triton autograd Function keeps only q, k, v): compare the
compiled rows, where LA2 is one custom op keeping its inputs.

    python benchmarks/saved_activations.py --model tnl_385m --tokens 32768
"""

import argparse
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


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
    a = p.parse_args(argv)
    import torch._dynamo
    from omegaconf import OmegaConf

    from tnl.models.config import ModelArgs
    from tnl.models.tnl import TnlBlock

    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / f"{a.model}.yaml"), resolve=True)
    rows = []
    for name, compiled, recompute in (("eager", False, False), ("compiled", True, False),
                                      ("compiled + recompute_elementwise", True, True)):
        torch.manual_seed(0)
        block = TnlBlock(ModelArgs.from_mapping(dict(cfg, recompute_elementwise=recompute)), a.layer)
        if compiled:
            torch._dynamo.reset()
            block.compile(backend="aot_eager_decomp_partition")
        b = per_token(block, 2, a.seq)
        total = b * cfg["num_hidden_layers"] * a.tokens / 2**30
        rows.append(f"| {name} | {b:,.0f} | {total:.2f} |")
        print(rows[-1], flush=True)
    print(f"\n{a.model}, layer {a.layer}, bf16 autocast, torch {torch.__version__}\n\n"
          f"| mode | saved bytes per token and layer | GiB at {a.tokens} tokens x {cfg['num_hidden_layers']} layers |\n"
          "|---|---|---|\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
