"""tnl.eval: held-out loss / perplexity, loss-curve comparison, zero-shot tasks on local files (and an lm-eval bridge).

    lm = load_run(run_dir, source="checkpoint" | "hf")  or  load_hf(hf_dir)       # tnl.eval.lm
    heldout_loss(lm, *val_batches(data_dir, seq_len, batch_size))                 # tnl.eval.heldout
    evaluate_task(lm, "hellaswag", root)                                          # tnl.eval.harness (+ tasks)
    run_lm_eval(hf_dir, ["piqa"], root)                                           # tnl.eval.lm_eval_bridge
    compare: load_run_log / markdown_table / write_plot                           # tnl.eval.compare
    context_sweep(lm, val_stream(data_dir), [512, ..., 16384])  # length extrapolation (tnl.eval.extrapolation)
    figures / figures_eval / repro_results / reproduce: scripts/reproduce.py's tables, plots, result files

Command lines: scripts/eval.py, scripts/compare_runs.py, scripts/reproduce.py (benchmarks/bench_train.py: throughput).
"""

from tnl.eval.harness import evaluate_task, loglikelihoods
from tnl.eval.heldout import heldout_loss, text_batches, val_batches
from tnl.eval.lm import EvalError, EvalLM, load_checkpoint, load_hf, load_run

__all__ = ["EvalError", "EvalLM", "evaluate_task", "heldout_loss", "load_checkpoint", "load_hf", "load_run",
           "loglikelihoods", "text_batches", "val_batches"]
