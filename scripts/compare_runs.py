"""Loss curves of runs side by side: a PNG (train + validation loss against tokens) and a markdown table.

    python scripts/compare_runs.py runs/tnl runs/llama --out benchmarks/results/reproduction/repro_small_tnl_vs_llama

Writes OUT.png and OUT.md (loss at fixed token counts, final validation perplexity, tokens/s, MFU); the logic lives
in tnl.eval.compare.
"""

import sys

from tnl.eval.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
