"""Where a training step's GPU time goes: torch.profiler over a few steps, reduced to a table of the top kernels.

Only the kernels themselves are counted (events on the CUDA device): the CPU-side ops that launch them (aten::mm,
autograd Functions, custom ops) report the same time again, and CUPTI's "Command Buffer Full" marker is no kernel,
so either would make the shares add up to more than the step. Used by the trainer (`trainer.profile_steps`) and by
benchmarks/bench_train.py (`--profile`).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("tnl.train")

MARKERS = ("Command Buffer Full",)  # CUPTI activity records that are not kernels


def top_kernels(prof, steps: int, top: int = 25) -> list[dict]:
    """The `top` GPU kernels of a finished torch.profiler run over `steps` steps: name, calls, ms per step, share
    of all kernel time."""
    events = [e for e in prof.key_averages()
              if e.device_type.name == "CUDA" and e.key not in MARKERS and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    rows = [{"kernel": e.key[:90], "calls": e.count, "ms_per_step": e.self_device_time_total / 1000 / steps,
             "share": e.self_device_time_total / total} for e in events]
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:top]


def kernel_table(rows: list[dict], title: str) -> list[str]:
    """Markdown lines of a top_kernels() result."""
    kernel_ms = sum(r["ms_per_step"] / r["share"] for r in rows[:1] if r["share"]) if rows else 0.0
    lines = [f"{title} (GPU kernel time {kernel_ms:.1f} ms per step):", "", "| kernel | calls | ms/step | share |",
             "|---|---|---|---|"]
    lines += [f"| `{r['kernel']}` | {r['calls']} | {r['ms_per_step']:.2f} | {r['share']:.1%} |" for r in rows]
    return lines


class StepProfiler:
    """Profiles optimizer steps first_step + 1 .. first_step + steps of a run and writes their top kernels to
    `path` (markdown) when the last one ends. Steps before first_step are the warm-up (compilation, autotuning)."""

    def __init__(self, path: Path, first_step: int, steps: int):
        if steps < 1 or first_step < 0:
            raise ValueError(f"profile: steps must be >= 1 and the first step >= 0, got {steps} and {first_step}")
        self.path, self.first, self.steps = Path(path), first_step, steps
        self.prof = None

    def before_step(self, step: int) -> None:
        """Called with the number of steps done so far, before the next one."""
        if step == self.first and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()

    def after_step(self, step: int) -> None:
        """Called with the number of steps done, after a step."""
        if self.prof is None or step != self.first + self.steps:
            return
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        rows = top_kernels(self.prof, self.steps)
        self.prof = None
        title = f"Top GPU kernels of steps {self.first + 1}-{self.first + self.steps}"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(kernel_table(rows, title)) + "\n")
        tmp.replace(self.path)
        log.info("profile of steps %d-%d: %s", self.first + 1, self.first + self.steps, self.path)
