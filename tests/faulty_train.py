"""scripts/train.py with a fault injected through the checkpoint's fault_hook, for the resume tests.

    [deepspeed ...] tests/faulty_train.py kill_during_save=N key=value ...

Rank 0 dies by SIGKILL in the middle of writing step N's checkpoint: its files are written, the checkpoint is not
yet published. The other arguments are scripts/train.py's (Hydra overrides; the launcher's --local_rank).
"""

import os
import signal
import sys

from tnl.train import engine
from tnl.train.run import cli

FLAG = "kill_during_save="


def main(argv: list[str]) -> int:
    steps = [int(a[len(FLAG):]) for a in argv if a.startswith(FLAG)]
    if len(steps) != 1:
        print(f"error: give {FLAG}N once", file=sys.stderr)
        return 2
    save = engine.TrainingRun.save

    def save_then_die(self, trainer, fault_hook=None):
        if self.env.is_main and trainer.state.step == steps[0]:
            fault_hook = lambda: os.kill(os.getpid(), signal.SIGKILL)
        return save(self, trainer, fault_hook=fault_hook)

    engine.TrainingRun.save = save_then_die  # read when the run binds on_save
    return cli([a for a in argv if not a.startswith(FLAG)])


if __name__ == "__main__":
    rc = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # as scripts/train.py: skip interpreter teardown
