"""Process-group plumbing: who am I, start the group, wait for the others.

Works the same under the `deepspeed` launcher, `torchrun` and a plain `python` process (world of one). The launchers
export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them a single process gets a free port.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass

import torch

log = logging.getLogger("tnl.train")
_LOCAL_RANK_ARG = re.compile(r"^--local[-_]rank(=\d+)?$")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` (or `--local_rank N`) that the deepspeed launcher appends; Hydra would reject it."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        m = _LOCAL_RANK_ARG.match(arg)
        if m:
            skip = m.group(1) is None  # the value is the next argument
            continue
        out.append(arg)
    return out


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env() -> DistEnv:
    """Rank, local rank and world size from the launcher's environment (0, 0, 1 without a launcher)."""
    get = lambda name, default: int(os.environ.get(name, default))
    return DistEnv(rank=get("RANK", 0), local_rank=get("LOCAL_RANK", 0), world_size=get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(device_type: str) -> DistEnv:
    """Start the process group through DeepSpeed (NCCL on CUDA, gloo on CPU) and pin this rank's device."""
    import deepspeed  # function-level: run.py imports this module on the dry-run path, which needs no DeepSpeed

    e = env()
    if e.world_size == 1:
        # a run without a launcher: DeepSpeed's process-group start reads the launcher's variables
        single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": str(_free_port())}
        added = {k: v for k, v in single.items() if k not in os.environ}
        os.environ.update(added)
        if added:
            log.info("one process, no launcher: set %s for DeepSpeed's process group",
                     " ".join(f"{k}={v}" for k, v in added.items()))
    if device_type == "cuda":
        torch.cuda.set_device(e.local_rank)
    if not torch.distributed.is_initialized():
        skip_shm_op()
        backend = "nccl" if device_type == "cuda" else "gloo"
        # init_distributed waits until every rank has joined: say so, in case some never come
        log.info("joining the process group: %s, %d rank(s), rendezvous at %s:%s", backend, e.world_size,
                 os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
        deepspeed.init_distributed(dist_backend=backend)
    return e


def skip_shm_op() -> None:
    """Keep DeepSpeed from loading its shared-memory all-reduce op (CPU accelerator only; a no-op elsewhere).

    On CPU, deepspeed.init_distributed JIT-compiles that op (torch.utils.cpp_extension, about a minute on two cores)
    under a lock file in the torch extensions cache (`<cache>/deepspeed_shm_comm/lock`) that only the builder
    removes. A start killed during the build leaves the file behind, and every later DeepSpeed start on that machine,
    by any user of that cache, then waits for it forever without a word. The op only serves inference_all_reduce
    (DeepSpeed's tensor-parallel inference): training reduces through the process group (gloo) either way, so the
    op is declared incompatible and DeepSpeed goes without it: no build, no lock, and none of the /dev/shm buffers
    (~69 MB per rank, never unlinked) the op maps."""
    from deepspeed.accelerator import get_accelerator  # function-level: see init()

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")
    if builder is not None:
        import deepspeed.ops  # function-level: see init()

        deepspeed.ops.__compatible_ops__[builder.NAME] = False  # what deepspeed.comm.torch.build_shm_op reads


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on every rank (one tiny all-reduce)."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    torch.distributed.all_reduce(t)
    return t.item() == 0.0


def mean(value: float, device: torch.device) -> float:
    """Average of a float over ranks."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()


def destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
