"""Hugging Face export of a run's checkpoint (ZeRO partitions consolidated to fp32), with its tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

from tnl.train import checkpoint

log = logging.getLogger("tnl.train")


def export_run(run_dir: str | Path, tag: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Write run_dir/hf (or out_dir) from the latest (or the given) checkpoint of run_dir; returns the folder."""
    import tnl.data
    import tnl.hf
    from tnl.models import build_model

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or checkpoint.latest_tag(ckpt_dir)
    if tag is None:
        raise checkpoint.CheckpointError(f"no complete checkpoint in {ckpt_dir}")
    if not (ckpt_dir / tag / "meta.json").is_file():
        raise checkpoint.CheckpointError(f"{ckpt_dir / tag} is not a complete checkpoint")
    meta = checkpoint.read_meta(ckpt_dir, tag)
    state = checkpoint.model_state_dict(ckpt_dir, tag)
    model = build_model(meta["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_names(model)]
    if missing or unexpected:
        raise checkpoint.CheckpointError(f"{ckpt_dir / tag} does not match its model config: missing {missing[:5]}, "
                                         f"unexpected {unexpected[:5]}")
    model.eval()
    out = Path(out_dir) if out_dir is not None else run_dir / "hf"
    tok_dir = None
    data_dir = meta.get("data_dir")
    if data_dir and Path(data_dir).is_dir():
        tok_dir = tnl.data.hf_tokenizer_dir(data_dir)
    else:
        log.warning("data dir %s of the run is gone: exporting without tokenizer files", data_dir)
    tnl.hf.export_pretrained(model, out, tokenizer_dir=tok_dir)
    log.info("exported %s (step %d) to %s", ckpt_dir / tag, meta["step"], out)
    return out


def _tied_names(model) -> set[str]:
    """State-dict names that alias another parameter (tied embeddings), which a consolidated dict may omit."""
    seen, tied = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied


def cli(argv: list[str]) -> int:
    """scripts/export_hf.py: run_dir=... [tag=...] [out_dir=...]; errors become one line on stderr."""
    import sys

    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("run_dir", "tag", "out_dir"):
            print(f"error: expected run_dir=PATH [tag=step_N] [out_dir=PATH], got {arg!r}", file=sys.stderr)
            return 2
        args[key] = value
    if "run_dir" not in args:
        print("error: run_dir=PATH is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        out = export_run(args["run_dir"], args.get("tag"), args.get("out_dir"))
    except (checkpoint.CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0
