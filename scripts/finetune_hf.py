"""Fine-tune an exported TNL (or LLaMA) folder with transformers' Trainer; the result is save_pretrained's folder.

    python scripts/finetune_hf.py --model runs/tiny/hf --data notes/*.txt --out runs/tiny-ft --steps 200
    python scripts/finetune_hf.py --model runs/tiny/hf --hf-path user/dataset --out runs/tiny-ft

Prints a JSON summary (steps, per-step losses, gradient_checkpointing, out). See tnl/hf/finetune.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tnl.hf.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
