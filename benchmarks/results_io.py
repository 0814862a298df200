"""The one writer of benchmark results: run facts, file names, and the JSON + markdown (+ PNG) of a measurement.

Every program in benchmarks/ writes through `write`, so that every result says where and how it was measured
(GPU, torch / triton / transformers versions, command line, UTC time, git commit, the kernel settings in force) and
is named by one rule:

    benchmarks/results/<topic>/<what>[_<tag>]_<gpu>_<YYYYMMDDTHHMMZ>.{json,md,png}

topic is one of TOPICS; <what> says what was measured (e.g. speed_vs_length_tnl_385m_compile, la2_shapes);
<gpu> is the short device name (NVIDIA H100 80GB HBM3 -> H100, CPU -> cpu); the stamp is the run's start, so a
program that rewrites its results after every row keeps one set of files.

    python benchmarks/results_io.py stem gpu_tests gpu_tests_all   # a stem by the same rule, for shell steps
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TOPICS = ("kernels", "training", "decode", "scaling", "reproduction")
LOGS = ("gpu_tests",)  # beside the topics: logs of the GPU test suite, named by the same rule
KERNEL_ENV = ("TNL_KERNEL_BACKEND", "TNL_LA2_ALGO", "TNL_FUSED_CE")


def topic_dir(topic: str) -> Path:
    """benchmarks/results/<topic>: a program's default --out (or the gpu_tests log folder)."""
    if topic not in TOPICS + LOGS:
        raise ValueError(f"topic must be one of {', '.join(TOPICS + LOGS)}, got {topic!r}")
    return RESULTS / topic


def short_gpu(name: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA H200' -> 'H200', 'cpu' -> 'cpu'; else the name's letters and
    digits (at most 16)."""
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name or "")
    if m:
        return m.group(1)
    return (re.sub(r"[^A-Za-z0-9]", "", name or "") or "cpu")[:16]


def slug(text: str) -> str:
    """A file-name part: runs of anything but letters, digits and '-' become one '_' (no '.': suffixes stay
    unambiguous)."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", str(text)).strip("_")


def device_name(device=None) -> str:
    """The CUDA device's name (the current one, or `device`'s), or 'cpu'."""
    import torch

    device = torch.device(device) if device is not None else None
    if device is not None and device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # absent or broken: the fact is "not there", not a failed benchmark
        return None


def git_commit() -> str | None:
    """The checkout's commit (+ '-dirty' with uncommitted changes to tracked files), or None outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "--short=12", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def kernel_settings() -> dict:
    """tnl.ops.settings() as a dict (backend, la2_algo, fused_loss, overrides); without it, the environment
    variables that select them."""
    try:
        import tnl.ops as ops

        fn = getattr(ops, "settings", None)
        fn = getattr(fn, "settings", fn)  # tnl.ops.settings may be the module holding settings()
        if callable(fn):
            s = fn()
            return s.as_dict() if hasattr(s, "as_dict") else dataclasses.asdict(s)
    except Exception:  # an older tnl, or one that fails to import: record what selects the kernels instead
        pass
    return {"env": {k: os.environ.get(k) for k in KERNEL_ENV}}


def run_facts(script: str, argv=None, device=None) -> dict:
    """Where and how a run measured: device, versions, command, UTC start time, git commit, kernel settings.

    script: the program's path relative to the repository (e.g. 'benchmarks/bench_train.py'); argv: its arguments
    (default sys.argv[1:]); device: the device measured on (default: the current CUDA device, else the CPU)."""
    import torch

    args = list(sys.argv[1:] if argv is None else argv)
    return {"gpu": device_name(device), "torch": torch.__version__, "triton": _version("triton"),
            "transformers": _version("transformers"), "cuda": torch.version.cuda,
            "python": platform.python_version(), "command": " ".join(["python", script] + args),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "kernel_settings": kernel_settings()}


def _when(facts: dict) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(str(facts.get("time")))
        return when.astimezone(dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    except ValueError:  # facts without a time (a rebuilt log): name by now
        return dt.datetime.now(dt.timezone.utc)


def stem(out, what: str, gpu: str, when: dt.datetime, tag: str = "") -> Path:
    """out/<what>[_<tag>]_<short gpu>_<YYYYMMDDTHHMMZ> (no suffix)."""
    name = "_".join(p for p in (slug(what), slug(tag)) if p)
    if not name:
        raise ValueError("a result needs a name saying what was measured")
    return Path(out) / f"{name}_{short_gpu(gpu)}_{when:%Y%m%dT%H%MZ}"


def _same_run(path: Path, facts: dict) -> bool:
    try:
        meta = json.loads(path.read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return False
    return meta.get("time") == facts.get("time") and meta.get("command") == facts.get("command")


def result_stem(out, what: str, facts: dict, tag: str = "") -> Path:
    """The stem this run's files get: another run's files of the same name and minute are kept (suffix _2, _3)."""
    base = stem(out, what, facts.get("gpu", "cpu"), _when(facts), tag)
    cand, n = base, 1
    while cand.with_suffix(".json").exists() and not _same_run(cand.with_suffix(".json"), facts):
        n += 1
        cand = base.with_name(f"{base.name}_{n}")
    return cand


def _replace(path: Path, write) -> None:
    """write(tmp) then rename onto path: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(out, what: str, facts: dict, payload: dict, markdown: str | list[str], tag: str = "", plot=None,
          echo: bool = True) -> Path:
    """Write {"meta": facts, **payload} as <stem>.json, the markdown as <stem>.md and, given plot(path), <stem>.png;
    print the markdown (echo) and return the stem path.

    out: the output folder (created); facts: run_facts() plus the program's own settings; markdown: text or lines.
    Called again with the same facts (a run rewriting its results after every row) it rewrites the same files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = result_stem(out, what, facts, tag)
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    text = text if text.endswith("\n") else text + "\n"
    _replace(path.with_suffix(".json"), lambda p: p.write_text(json.dumps({"meta": facts, **payload}, indent=1)))
    _replace(path.with_suffix(".md"), lambda p: p.write_text(text))
    if plot is not None:
        _replace(path.with_suffix(".png"), plot)
    if echo:
        print(text, end="")
    return path


def main(argv=None) -> int:
    """`stem TOPIC WHAT [TAG]`: print benchmarks/results/<topic>/<what>[_<tag>]_<gpu>_<stamp> (no suffix) for this
    machine's GPU and now, creating the folder; $RESULTS replaces benchmarks/results. For shell steps whose files
    other programs write (logs, copied metrics)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4) or args[0] != "stem":
        print("usage: results_io.py stem TOPIC WHAT [TAG]", file=sys.stderr)
        return 2
    _, topic, what, *tag = args
    try:
        folder = topic_dir(topic)
        if os.environ.get("RESULTS"):
            folder = Path(os.environ["RESULTS"]) / topic
        path = stem(folder, what, device_name(), dt.datetime.now(dt.timezone.utc), tag[0] if tag else "")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
