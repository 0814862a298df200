"""Hugging Face export of a run's checkpoint (ZeRO partitions consolidated to fp32), with its tokenizer and a model
card that says what the run trained on and how far."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import tnl.data
import tnl.hf
from tnl.checkpoint_format import CheckpointError, load_model
from tnl.hf.card import CardInfo

log = logging.getLogger("tnl.train")


def export_run(run_dir: str | Path, tag: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Write run_dir/hf (or out_dir) from the latest (or the given) checkpoint of run_dir; returns the folder."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    model, meta, tag = load_model(ckpt_dir, tag)
    out = Path(out_dir) if out_dir is not None else run_dir / "hf"
    tok_dir = None
    data_dir = meta.get("data_dir")
    if data_dir and Path(data_dir).is_dir():
        tok_dir = tnl.data.hf_tokenizer_dir(data_dir)
    else:
        log.warning("data dir %s of the run is gone: exporting without tokenizer files", data_dir)
    tnl.hf.export_pretrained(model, out, tokenizer_dir=tok_dir, card=card_info(run_dir, meta))
    log.info("exported %s (step %d) to %s", ckpt_dir / tag, meta["step"], out)
    return out


def _source_label(desc: dict) -> str:
    """One input of a data manifest in words (a file name, the demo corpus, or a Hugging Face dataset)."""
    hf = desc.get("hf")
    if hf:
        where = {"hub": "Hugging Face Hub", "disk": "a save_to_disk folder", "files": "local files"}
        text = f"{hf['path']}" + (f" ({hf['name']})" if hf.get("name") not in (None, "default") else "")
        text += f" split {hf['split']} ({where.get(hf.get('source'), hf.get('source'))}"
        return text + (f", revision {hf['revision'][:12]})" if hf.get("revision") else ")")
    if desc["path"].startswith("builtin:"):
        return f"the documentation shipped with Python ({desc['path']})"
    return Path(desc["path"]).name


def card_info(run_dir: Path, meta: dict):
    """The model card facts of a run's checkpoint: step, tokens, its data manifest, its last validation loss."""
    info = CardInfo(name=Path(run_dir).resolve().name, step=meta.get("step"), tokens=meta.get("tokens"))
    manifest = tnl.data.read_manifest(meta["data_dir"]) if meta.get("data_dir") else None
    if manifest:
        def listed(entries):
            labels = [_source_label(d) for d in entries]
            return ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")

        info.data = f"{manifest.get('name')}: {listed(manifest.get('inputs', []))}"
        if manifest.get("val_inputs"):
            info.data += f"; validation: {listed(manifest['val_inputs'])}"
        info.data_tokens = {k: v["tokens"] for k, v in manifest.get("splits", {}).items()}
        info.notes.append(f"tokenizer: SentencePiece BPE, {manifest['tokenizer']['vocab_size']} tokens")
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            val = row.get("val_loss")
            if isinstance(val, (int, float)) and math.isfinite(val) and row.get("step", 0) <= (info.step or math.inf):
                info.val_loss, info.val_step = float(val), row.get("step")
    return info


def cli(argv: list[str]) -> int:
    """scripts/export_hf.py: run_dir=... [tag=...] [out_dir=...]; errors become one line on stderr."""
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
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0
