"""Train (or resume) a model: Hydra overrides on the command line, DeepSpeed underneath.

    deepspeed scripts/train.py model=tnl_385m data=gutenberg deepspeed=zero2 trainer.max_steps=1000
    torchrun --nproc_per_node 2 scripts/train.py ...
    python scripts/train.py model=tnl_tiny data=demo trainer.max_steps=50 run_dir=runs/tiny
    python scripts/train.py model=tnl_15b trainer.dry_run=true

Re-running the same command with the same run_dir resumes from its latest complete checkpoint.
"""

import os
import sys

# Expandable segments: long contexts allocate activations of many sizes, and the caching allocator's fixed
# segments fragment (a setting of the user's environment wins). Must be set before torch initialises CUDA.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from tnl.train.run import cli  # noqa: E402

if __name__ == "__main__":
    rc = cli(sys.argv[1:])
    # Everything is written and closed by now; skip interpreter teardown, where DeepSpeed's process groups
    # stall each rank for seconds.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
