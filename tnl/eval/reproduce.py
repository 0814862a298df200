"""scripts/reproduce.py: the paper's figures from one command: measure on a GPU, or redraw from committed results.

    python scripts/reproduce.py speed           # training tokens/s against context, TNL vs LLaMA (bench_train.py)
    python scripts/reproduce.py loss            # repro_small, two seeds per model: curves, gap vs seed spread
    python scripts/reproduce.py extrapolation   # held-out perplexity at contexts 512 .. 16K of those checkpoints
    python scripts/reproduce.py tasks           # zero-shot table of those checkpoints (tnl's scorer)
    python scripts/reproduce.py all --redraw    # every figure from benchmarks/results, on any machine

On a machine with a CUDA GPU (and without --redraw) the measurement runs first: `speed` calls benchmarks/bench_train.py,
`loss` trains repro_small for each --models x --seeds (scripts/train.py; ~3 H100 minutes per run), `extrapolation`
and `tasks` evaluate those runs' final checkpoints (scripts/eval.py, which needs the run dirs: run `loss` first on the
same machine). Each measurement writes its result files into --results (names: tnl.eval.repro_results); then every
figure is redrawn from all the files there: <out>/<figure>.png + <figure>.md. Without a GPU, or with --redraw, only
the redraw runs. Extra `key=value` arguments go to scripts/train.py (e.g. trainer.max_steps=200, for both models
alike).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tnl.checkpoint_format import latest_meta
from tnl.eval.lm import EvalError
from tnl.eval.repro_results import MODELS, short_gpu, stem_for

log = logging.getLogger("tnl.eval")
REPO = Path(__file__).resolve().parents[2]
RESULTS = Path("benchmarks/results")
REPRO_DIR = RESULTS / "reproduction"
# The committed training-speed sweep the speed figure redraws unless a newer reproduce measurement is in --results:
# bench_train --compile on one H100, 32K tokens per step, both models measured the same day.
SPEED_SOURCES = (RESULTS / "training" / "speed_vs_length_tnl_385m_compile_H100_20261127T1205Z.json",
                 RESULTS / "training" / "speed_vs_length_llama_385m_compile_H100_20261127T1206Z.json")
SPEED_TAG = "reproduce_speed"
FIGURES = ("speed", "loss", "extrapolation", "tasks")
CONTEXTS = "512,1024,2048,4096,8192,16384"
STEM_FILE = "reproduce_stem.txt"  # in a run dir: the stem its result files carry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=FIGURES + ("all",))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra scripts/train.py overrides (loss)")
    p.add_argument("--redraw", action="store_true", help="only redraw from the result files (the default without "
                                                         "a CUDA GPU)")
    p.add_argument("--measure", action="store_true",
                   help="measure even without a CUDA GPU (a CPU smoke test of the measuring path, tiny overrides)")
    p.add_argument("--no-draw", action="store_true", help="measure only (e.g. where matplotlib is missing)")
    p.add_argument("--results", default=str(REPRO_DIR), help=f"result files (default {REPRO_DIR})")
    p.add_argument("--out", help="where the figures go (default: --results)")
    p.add_argument("--speed-from", nargs="+", metavar="JSON", help="bench_train.py results for the speed figure "
                   "(default: the newest reproduce measurement in --results, else the committed H100 sweep)")
    p.add_argument("--speed-args", default="", metavar="ARGS",
                   help="speed: more benchmarks/bench_train.py arguments, after the defaults (e.g. "
                        "'--seq-lens 2048,16384'; '--cpu-smoke --models tnl_tiny,llama_tiny' on CPU)")
    p.add_argument("--experiment", default="repro_small", help="configs/experiment to train (default repro_small)")
    p.add_argument("--models", default="tnl,llama", help="comma list of tnl, llama (default both)")
    p.add_argument("--seeds", default="1234,1235", help="comma list of seeds to train / evaluate")
    p.add_argument("--steps", type=int, default=400, help="trainer.max_steps of each run (default 400: 26.2M "
                                                          "tokens, the committed runs)")
    p.add_argument("--runs", default="runs", help="where the run dirs go (default runs/)")
    p.add_argument("--contexts", default=CONTEXTS, help=f"evaluation contexts (default {CONTEXTS})")
    p.add_argument("--max-tokens", type=int, default=0, help="extrapolation: tokens scored per context (0: all)")
    p.add_argument("--tasks-limit", type=int, default=500, help="documents per zero-shot task (0: all)")
    p.add_argument("--with-tasks", action="store_true",
                   help="extrapolation: score the zero-shot tasks in the same eval.py call (one model load)")
    p.add_argument("--eval-root", help="folder of the task files (default: $TNL_EVAL_ROOT or ../shared/evals)")
    p.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------------------ measuring
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "deepspeed"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def _run(cmd: list[str]) -> float:
    """Run a command from the repository root, streaming its output; its wall seconds, or EvalError on failure."""
    log.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise EvalError(f"command failed (exit status {proc.returncode}): {' '.join(cmd)}")
    return round(time.perf_counter() - t0, 1)


def _pairs(args) -> list[tuple[str, int]]:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise EvalError(f"--models takes a comma list of {sorted(MODELS)}, got {args.models!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise EvalError("--seeds is empty")
    return [(m, s) for m in models for s in seeds]


def _run_dir(args, model: str, seed: int) -> Path:
    return Path(args.runs) / f"{args.experiment}_{model}_seed{seed}"


def measure_speed(args, results: Path) -> None:
    _run([args.python, "benchmarks/bench_train.py", "--models", ",".join(MODELS[m] for m in MODELS), "--compile",
          "--out", str(results), "--tag", SPEED_TAG, *shlex.split(args.speed_args)])


def measure_loss(args, results: Path) -> None:
    gpu = _gpu_name()
    for model, seed in _pairs(args):
        run_dir = _run_dir(args, model, seed)
        stem = stem_for(args.experiment, model, seed, gpu)
        cmd = [args.python, "scripts/train.py", f"experiment={args.experiment}", f"model={MODELS[model]}",
               f"seed={seed}", f"run_dir={run_dir}", f"trainer.max_steps={args.steps}", *args.overrides]
        seconds = _run(cmd)
        shutil.copyfile(run_dir / "metrics.jsonl", results / f"{stem}.metrics.jsonl")
        (run_dir / STEM_FILE).write_text(stem + "\n")
        _write_json(results / f"{stem}.run.json", {
            "gpu": gpu, "versions": _versions(), "command": " ".join(["python"] + cmd[1:]),
            "reproduce": " ".join(["python", "scripts/reproduce.py"] + sys.argv[1:]), "seconds": seconds,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "config": _config(run_dir),
            "data": _data_facts(run_dir)})


def measure_eval(args, results: Path, what: str) -> None:
    """what: 'extrapolation' (contexts, + tasks with --with-tasks) or 'tasks'."""
    gpu = _gpu_name()
    for model, seed in _pairs(args):
        run_dir = _run_dir(args, model, seed)
        if not (run_dir / "checkpoints").is_dir():
            raise EvalError(f"{run_dir} has no checkpoints: train it first (scripts/reproduce.py loss --models "
                            f"{model} --seeds {seed}) on this machine")
        stem_file = run_dir / STEM_FILE
        stem = stem_file.read_text().strip() if stem_file.is_file() else stem_for(args.experiment, model, seed, gpu)
        kind = "eval.json" if what == "extrapolation" else "tasks.json"
        cmd = [args.python, "scripts/eval.py", "--run", str(run_dir), "--no-progress", "--out",
               str(results / f"{stem}.{kind}")]
        if what == "extrapolation":
            cmd += ["--contexts", args.contexts, "--max-tokens", str(args.max_tokens)]
        if what == "tasks" or args.with_tasks:
            cmd += ["--tasks", "all", "--limit", str(args.tasks_limit)]
            if args.eval_root:
                cmd += ["--data-dir", args.eval_root]
        _run(cmd)


def _config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


def _data_facts(run_dir: Path) -> dict:
    """The prepared data the run read: its dir, the tokenizer's sha256, the input file names and token counts."""
    from tnl.data import read_manifest

    data_dir = latest_meta(run_dir / "checkpoints").get("data_dir")
    manifest = read_manifest(data_dir) if data_dir else None
    if not manifest:
        return {"data_dir": data_dir}
    return {"data_dir": data_dir, "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256"),
            "inputs": [Path(i.get("path", "")).name for i in manifest.get("inputs", [])],
            "val_inputs": [Path(i.get("path", "")).name for i in manifest.get("val_inputs", [])],
            "tokens": {k: v.get("tokens") for k, v in manifest.get("splits", {}).items()}}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ drawing
def speed_sources(args, results: Path) -> list[Path]:
    if args.speed_from:
        return [Path(p) for p in args.speed_from]
    measured = sorted(results.glob(f"speed_vs_length_*_{SPEED_TAG}_*.json"))
    return [measured[-1]] if measured else [Path(p) for p in SPEED_SOURCES]


def draw(figure: str, args, results: Path, out: Path) -> Path:
    """Write <out>/<figure>.png (when the figure has one) and then <figure>.md; returns the markdown path."""
    from tnl.eval import figures, figures_eval

    if figure == "speed":
        md, data = figures.speed_table(speed_sources(args, results))
        figures.plot_speed(data, out / "speed.png")
    elif figure == "loss":
        md, data = figures.loss_table(results, args.experiment)
        figures.plot_loss(data, out / "loss.png")
    elif figure == "extrapolation":
        md, data = figures_eval.extrapolation_table(results, args.experiment)
        figures_eval.plot_extrapolation(data, out / "extrapolation.png")
    else:
        md, _ = figures_eval.tasks_table(results, args.experiment)
    path = out / f"{figure}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(md + f"\nRedraw: `python scripts/reproduce.py {figure} --redraw`.\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run(args) -> list[Path]:
    import torch

    results = Path(args.results)
    out = Path(args.out) if args.out else results
    figures = list(FIGURES) if args.figure == "all" else [args.figure]
    if args.measure and args.redraw:
        raise EvalError("--measure and --redraw exclude each other")
    measure = args.measure or (not args.redraw and torch.cuda.is_available())
    if args.no_draw and not measure:
        raise EvalError("--no-draw without a measurement (no CUDA GPU, or --redraw) would do nothing")
    if measure:
        results.mkdir(parents=True, exist_ok=True)
        log.info("CUDA GPU %s: measuring %s (short name %s)", _gpu_name(), ", ".join(figures), short_gpu(_gpu_name()))
        for f in figures:
            if f == "speed":
                measure_speed(args, results)
            elif f == "loss":
                measure_loss(args, results)
            elif f == "extrapolation" or (f == "tasks" and not (args.with_tasks and "extrapolation" in figures)):
                measure_eval(args, results, f)
    elif not results.is_dir():
        raise EvalError(f"results folder {results} does not exist")
    if args.no_draw:
        return []
    return [draw(f, args, results, out) for f in figures]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: extra arguments must be key=value train.py overrides, got {bad}", file=sys.stderr)
        return 2
    try:
        written = run(args)
    except (EvalError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for p in written:
        log.info("wrote %s", p)
    return 0

