"""What every LA2 benchmark script writes: the run's facts (GPU, versions, command, time) and a
`<prefix>_<gpu>_<UTC stamp>[_<tag>].json/.md` pair in the output folder."""

import datetime as dt
import json
import os
import sys
from pathlib import Path

import torch
import triton


def run_meta(script: str, argv=None) -> dict:
    """GPU name, torch / triton versions, the command line, the UTC time and TNL_LA2_ALGO of this run."""
    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "command": " ".join(["python", script] + list(argv if argv is not None else sys.argv[1:])),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "TNL_LA2_ALGO": os.environ.get("TNL_LA2_ALGO")}


def write(out, prefix: str, meta: dict, payload: dict, lines: list[str], tag: str = "") -> Path:
    """Write {"meta": meta, **payload} as JSON and `lines` as markdown; print the markdown. Returns the stem path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = "".join(c if c.isalnum() else "_" for c in meta["gpu"])[:30]
    stem = out / (f"{prefix}_{gpu}" + dt.datetime.now(dt.timezone.utc).strftime("_%Y%m%dT%H%M%SZ")
                  + (f"_{tag}" if tag else ""))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, **payload}, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem
