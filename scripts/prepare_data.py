"""Tokenizer + pre-tokenized shards for a data config: `python scripts/prepare_data.py data=<name> [data.key=...]`.

A no-op when data.dir is already up to date; `+force=true` rebuilds. Bad input ends with one error line and exit 2.
"""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tnl.data import DataError, prepare, read_manifest  # noqa: E402


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    logging.getLogger("tnl").setLevel(logging.INFO)
    try:
        out = prepare(cfg.data, force=bool(cfg.get("force", False)))
    except DataError as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        sys.exit(2)
    m = read_manifest(out)
    splits = ", ".join(f"{k} {v['docs']} docs / {v['tokens']} tokens" for k, v in m["splits"].items())
    print(f"prepared {out}: {splits} ({m['dtype']}, vocab {m['tokenizer']['vocab_size']})")


if __name__ == "__main__":
    main()
