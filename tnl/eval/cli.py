"""scripts/eval.py: held-out loss / perplexity and zero-shot tasks of a run or an HF directory; JSON out.

    python scripts/eval.py --run runs/tiny                          # latest checkpoint, the run's validation split
    python scripts/eval.py --run runs/tiny --source hf              # the same through the run's hf/ export
    python scripts/eval.py --hf path/to/hf data=gutenberg           # any HF dir on a data config's val split
    python scripts/eval.py --hf path/to/hf --text a.txt b.jsonl     # on text files (.txt: a document per file)
    python scripts/eval.py --hf runs/tiny/hf --tasks all --data-dir ../shared/evals --limit 500
    python scripts/eval.py --run runs/tiny --contexts 512,1K,2K,4K,8K,16K   # loss at each context (extrapolation)

Positional key=value arguments are Hydra overrides of the data config (configs/data/<name>.yaml), as for train.py.
The JSON report goes to stdout and to --out (default: <run>/eval/<source>.json, or <hf>.eval.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from tnl.checkpoint_format import latest_meta
from tnl.eval.lm import EvalError, EvalLM, load_hf, load_run, same_tokenizer

log = logging.getLogger("tnl.eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/eval.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a training run dir (evaluates its latest complete checkpoint)")
    src.add_argument("--hf", help="a Hugging Face model directory (an export, or a stock causal LM)")
    p.add_argument("--tag", help="with --run: this checkpoint tag instead of the latest (e.g. step_00000100)")
    p.add_argument("--source", choices=("checkpoint", "hf"), default="checkpoint",
                   help="with --run: the DeepSpeed checkpoint (default) or the run's hf/ export")
    p.add_argument("overrides", nargs="*", metavar="data=NAME|data.KEY=VALUE",
                   help="data config to take the validation split of (default with --run: the run's own data)")
    p.add_argument("--text", nargs="+", metavar="FILE", help="evaluate on these .txt/.jsonl files instead")
    p.add_argument("--seq-len", "--context", type=int, dest="seq_len",
                   help="evaluation context: tokens per window (default: the run's trainer.seq_len, else 2048)")
    p.add_argument("--contexts", metavar="L1,L2,...",
                   help="length extrapolation: the loss at each of these contexts (K = 1024) over the same tokens, "
                        "disjoint windows, each token scored once per context (tnl.eval.extrapolation); replaces "
                        "the single --seq-len evaluation")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="with --contexts: score at most this many tokens (0: all that fill whole windows)")
    p.add_argument("--tokens-per-batch", type=int, default=16384,
                   help="with --contexts: tokens per forward (windows per batch = this / context, at least 1)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0: all)")
    p.add_argument("--tasks", help="zero-shot tasks: 'all' or a comma list (lambada_openai,piqa,arc_easy,...)")
    p.add_argument("--data-dir", help="folder of the task files (default: $TNL_EVAL_ROOT or ../shared/evals)")
    p.add_argument("--limit", type=int, default=0, help="first N documents of each task (0: all)")
    p.add_argument("--backend", choices=("tnl", "lm-eval"), default="tnl",
                   help="task scorer: tnl's own (EOS-prefixed requests; any --run/--hf) or lm-evaluation-harness "
                        "(the `eval` extra; scores the HF directory, as lm-eval does: no prefix)")
    p.add_argument("--max-len", type=int, default=2048, help="longest task request in tokens (default 2048)")
    p.add_argument("--device", help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--out", help="JSON report path")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _run_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else {}


def _data_dir(args, lm: EvalLM, run_cfg: dict) -> Path:
    """The prepared data dir to take the validation split of; its tokenizer must be the model's."""
    if args.overrides:
        bad = [o for o in args.overrides if not (o.startswith("data=") or o.startswith("data."))]
        if bad:
            raise EvalError(f"only data=NAME / data.KEY=VALUE overrides are accepted here, got {bad}")
        import tnl.data
        from tnl.config import compose, to_dict

        data_cfg = to_dict(compose(list(args.overrides)).data)
        try:
            data_dir = Path(tnl.data.DataConfig.from_mapping(data_cfg).dir)  # data.dir, or its default
        except ValueError as err:
            raise EvalError(str(err)) from None
        if not (data_dir / "manifest.json").is_file():
            # preparing here would train a tokenizer the model has never seen
            raise EvalError(f"data {data_cfg.get('name')!r} is not prepared in {data_dir}: set data.dir to the "
                            "prepared dir the model was trained with, or give the raw files with --text")
        if not tnl.data.is_prepared(data_cfg):
            log.warning("%s was prepared from another config than the one given: evaluating it as prepared", data_dir)
    elif lm.info.get("data_dir"):
        data_dir = Path(lm.info["data_dir"])
    elif run_cfg:
        raise EvalError("the run's checkpoint names no data dir: give data=NAME")
    else:
        raise EvalError("give data=NAME (a configs/data config) or --text FILE... for the held-out loss")
    if not data_dir.is_dir():
        raise EvalError(f"data dir {data_dir} does not exist (a relative path is relative to where training ran: "
                        "run from there, or give data.dir=PATH)")
    if same_tokenizer(lm.tokenizer_json, data_dir / "hf_tokenizer" / "tokenizer.json") is False:
        raise EvalError(f"the model's tokenizer differs from the one in {data_dir}: the loss would be meaningless")
    return data_dir


def _default_out(args) -> Path:
    if args.run:
        name = args.source if args.tag is None else f"{args.source}_{args.tag}"
        return Path(args.run) / "eval" / f"{name}.json"
    hf = Path(args.hf)
    return hf.with_name(hf.name + ".eval.json")


def write_json(path: Path, report: dict) -> None:
    """Atomically (temp file + rename): a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def run(args) -> dict:
    """Load the model, evaluate what was asked, return the report (written by main)."""
    from tnl.eval.harness import evaluate_task
    from tnl.eval.heldout import heldout_loss, text_batches, val_batches
    from tnl.eval.tasks import default_root, paper_average, parse_task_list

    for name in ("batch_size", "max_len"):
        if getattr(args, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1")
    if args.seq_len is not None and args.seq_len < 1:
        raise EvalError("--seq-len must be >= 1")
    contexts = None
    if args.contexts is not None:
        from tnl.eval.extrapolation import parse_contexts

        contexts = parse_contexts(args.contexts)
        if args.seq_len is not None:
            raise EvalError("give either --seq-len (one context) or --contexts (a sweep), not both")
        if args.tokens_per_batch < 1 or args.max_tokens < 0:
            raise EvalError("--tokens-per-batch must be >= 1 and --max-tokens >= 0")
    if args.run is None and (args.tag is not None or args.source != "checkpoint"):
        raise EvalError("--tag and --source apply to --run only")
    tasks = parse_task_list(args.tasks) if args.tasks else []
    if tasks and args.backend == "lm-eval" and args.run and args.source != "hf":
        raise EvalError("--backend lm-eval scores an HF directory: use --hf DIR or --run RUN --source hf")
    if args.run:
        lm = load_run(args.run, args.tag, args.source, args.device, args.dtype)
        run_cfg = _run_config(Path(args.run))
        if run_cfg and not lm.info.get("data_dir"):  # an hf source: the run's data dir is in its latest checkpoint
            lm.info["data_dir"] = _checkpoint_data_dir(Path(args.run))
    else:
        lm, run_cfg = load_hf(args.hf, args.device, args.dtype), {}
    report = {"model": lm.info, "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", "")}
    want_loss = bool(args.text or args.overrides or contexts or not tasks)
    if want_loss and contexts:
        report["contexts"] = _context_sweep(args, lm, run_cfg, contexts)
    elif want_loss:
        seq_len = args.seq_len or int(run_cfg.get("trainer", {}).get("seq_len", 2048))
        if args.text:
            batches, total = text_batches(args.text, lm.tokenizer, lm.eos_id, seq_len, args.batch_size)
            where = {"text": [str(t) for t in args.text]}
        else:
            data_dir = _data_dir(args, lm, run_cfg)
            batches, total = val_batches(data_dir, seq_len, args.batch_size)
            where = {"data_dir": str(data_dir), "split": "val"}
        result = heldout_loss(lm, batches, total, args.max_batches, progress=not args.no_progress)
        report["heldout"] = {**where, "seq_len": seq_len, **result}
    if tasks:
        root = Path(args.data_dir) if args.data_dir else default_root()
        report["tasks"] = {"data_dir": str(root), "limit": args.limit, "backend": args.backend}
        if args.backend == "lm-eval":
            from tnl.eval.lm_eval_bridge import run_lm_eval

            dtype = "bfloat16" if str(lm.dtype) == "torch.bfloat16" else "float32"
            report["tasks"].update(run_lm_eval(lm.info["path"], tasks, root, args.limit, args.batch_size,
                                               str(lm.device), dtype, args.max_len))
        else:
            for name in tasks:
                report["tasks"][name] = evaluate_task(lm, name, root, args.limit, args.batch_size, args.max_len,
                                                      progress=not args.no_progress)
        average = paper_average(report["tasks"])
        if average is not None:
            report["tasks"]["paper_average"] = average
    return report


def _context_sweep(args, lm: EvalLM, run_cfg: dict, contexts: list[int]) -> dict:
    from tnl.eval.extrapolation import context_sweep, text_stream, val_stream

    if args.text:
        stream, where = text_stream(args.text, lm.tokenizer, lm.eos_id), {"text": [str(t) for t in args.text]}
    else:
        data_dir = _data_dir(args, lm, run_cfg)
        stream, where = val_stream(data_dir), {"data_dir": str(data_dir), "split": "val"}
    train_len = run_cfg.get("trainer", {}).get("seq_len")
    sweep = context_sweep(lm, stream, contexts, args.max_tokens, args.tokens_per_batch,
                          progress=not args.no_progress)
    return {**where, "train_seq_len": train_len, **sweep}


def _checkpoint_data_dir(run_dir: Path) -> str | None:
    return latest_meta(run_dir / "checkpoints").get("data_dir")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input becomes one `error:` line on stderr and exit status 1 (2 for usage errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from tnl.data import DataError

    try:
        report = run(args)
        out = Path(args.out) if args.out else _default_out(args)
        write_json(out, report)
    except (EvalError, DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    log.info("wrote %s", out)
    return 0
