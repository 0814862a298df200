"""Held-out loss / perplexity (and zero-shot tasks) of a run's checkpoint or of a Hugging Face directory.

    python scripts/eval.py --run runs/tiny                       # latest checkpoint, the run's validation split
    python scripts/eval.py --run runs/tiny --source hf           # the same number through runs/tiny/hf
    python scripts/eval.py --hf DIR data=gutenberg               # an HF dir on a data config's validation split
    python scripts/eval.py --hf DIR --text a.txt                 # on text files
    python scripts/eval.py --hf DIR --tasks all --data-dir ../shared/evals

See `python scripts/eval.py --help`; the logic lives in tnl.eval.cli.
"""

import sys

from tnl.eval.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
