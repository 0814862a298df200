"""The paper's figures from one command: measure on a CUDA GPU, or redraw from the committed results.

    python scripts/reproduce.py speed            # training tokens/s against context (benchmarks/bench_train.py)
    python scripts/reproduce.py loss             # repro_small, two seeds per model: curves, gap vs seed spread
    python scripts/reproduce.py extrapolation    # held-out perplexity at evaluation contexts 512 .. 16K
    python scripts/reproduce.py tasks            # zero-shot tasks of the same checkpoints
    python scripts/reproduce.py all --redraw     # every figure from benchmarks/results/reproduction, on any machine

See `python scripts/reproduce.py --help`; the logic lives in tnl.eval.reproduce.
"""

import sys

from tnl.eval.reproduce import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
