"""Tokenizer + pre-tokenized shards for a data config.

    python scripts/prepare_data.py data=gutenberg                 # Hydra overrides, composed like train.py
    python scripts/prepare_data.py data.inputs=[my/*.jsonl.gz] data.text_field=content data.vocab_size=8192
    python scripts/prepare_data.py data=demo --force              # rebuild even when up to date
    python scripts/prepare_data.py data=gutenberg data.mix={tinyshakespeare:0.1}   # + a mixture member

A no-op when data.dir is already up to date. Bad input ends with one error line and exit status 2.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tnl.config import ConfigError, compose, to_dict  # noqa: E402
from tnl.data import DataError, prepare, read_manifest  # noqa: E402
from tnl.data.mixture import mixture_members, mixture_sources, prepare_members  # noqa: E402


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    force = "--force" in argv
    try:
        cfg = compose([a for a in argv if a != "--force"])
        out = prepare(cfg.data, force=force)
        data = to_dict(cfg.data)
        if data.get("mix"):  # mixture members, tokenized with this dataset's tokenizer (as training does)
            members = mixture_members(data, Path(out))
            prepare_members(members)
            mixture_sources(data, Path(out), members)
    except (ConfigError, DataError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. data.dir not writable, disk full
        print(f"prepare_data: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the dir was left without a manifest: it does not look prepared
        print("prepare_data: interrupted", file=sys.stderr)
        return 130
    m = read_manifest(out)
    splits = ", ".join(f"{k} {v['docs']} docs / {v['tokens']} tokens" for k, v in m["splits"].items())
    print(f"prepared {out}: {splits} ({m['dtype']}, vocab {m['tokenizer']['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
