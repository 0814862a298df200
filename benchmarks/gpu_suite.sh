#!/usr/bin/env bash
# The GPU work the open issues still owe, as named steps, each writing into benchmarks/results/ (or $RESULTS).
# Run on a CUDA machine from the repository root, with the project importable (`make install`, or the wheelhouse
# plus PYTHONPATH). Steps can be run one at a time so that each fits a short time slot:
#
#   bash benchmarks/gpu_suite.sh tests        # make test-gpu equivalent: kernels, ops, models, HF, training  (~3 min)
#   bash benchmarks/gpu_suite.sh kernels      # LA2 vs FA2 / OpenNLPLab / fla over T, head dims, packed       (~6 min)
#   bash benchmarks/gpu_suite.sh decode       # decode ms/token, tnl_385m vs llama_385m, 1K..128K context    (~3 min)
#   bash benchmarks/gpu_suite.sh throughput   # training tokens/s + peak memory over context 2K..64K          (~6 min)
#   bash benchmarks/gpu_suite.sh train        # short tnl_385m / llama_385m runs on gutenberg: tokens/s, MFU  (~6 min)
#
# fla-core and lightning-attn are optional competitors in `kernels` (reported as missing when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"

step=${1:?usage: gpu_suite.sh tests|kernels|decode|throughput|train}
case $step in
  tests)
    "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$RESULTS/gpu_tests_$(date -u +%Y%m%dT%H%MZ).log" ;;
  kernels)
    "$PY" scripts/bench_kernels.py --out "$RESULTS" ;;
  decode)
    "$PY" -m tnl.hf.bench_decode --out "$RESULTS" ;;
  throughput)
    "$PY" scripts/bench_train.py --models tnl_385m,llama_385m --out "$RESULTS" ;;
  train)
    # Equal tokens for both models; data=gutenberg needs TNL_DATA_ROOT (or data.root=) pointing at the corpora.
    for exp in tnl_385m_h100 llama_385m_h100; do
      "$PY" scripts/train.py experiment=$exp data=gutenberg run_dir="runs/$exp" trainer.max_steps="${STEPS:-60}"
      cp "runs/$exp/metrics.jsonl" "$RESULTS/train_${exp}_metrics.jsonl"
    done
    "$PY" scripts/compare_runs.py runs/tnl_385m_h100 runs/llama_385m_h100 --out "$RESULTS/train_385m_h100" ;;
  *)
    echo "gpu_suite: unknown step '$step' (tests|kernels|decode|throughput|train)" >&2; exit 2 ;;
esac
