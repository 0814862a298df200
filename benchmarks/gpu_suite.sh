#!/usr/bin/env bash
# The GPU measurements as named steps. Each step writes into one topic folder of benchmarks/results/ (or of
# $RESULTS): kernels, training, decode, scaling or reproduction (test logs: gpu_tests), with file names
# <what>_<gpu>_<UTC stamp>.* made by benchmarks/results_io.py. Runs from any working directory on a CUDA machine,
# with the project importable (`make install`, or the wheelhouse plus PYTHONPATH). Steps can be run one at a time
# so that each fits a short time slot:
#
#   bash benchmarks/gpu_suite.sh tests        # make test-gpu equivalent: kernels, ops, models, HF, training  (~3 min)
#   bash benchmarks/gpu_suite.sh pytest ARGS / bench_train ARGS               # any pytest / bench_train selection
#   bash benchmarks/gpu_suite.sh kernels      # LA2 vs FA2 / OpenNLPLab / fla over T, head dims, packed      (~10 min)
#   bash benchmarks/gpu_suite.sh tune         # LA2 block-size tuning -> a new la2_tuned table in $RESULTS/kernels/
#                                             # (the current table plus this GPU's entry: copy to kernels/tnl_kernels/)
#   bash benchmarks/gpu_suite.sh shapes       # LA2 chunk vs fused at model shapes (benchmarks/bench_la2_shapes.py)
#   bash benchmarks/gpu_suite.sh profile      # LA2 fwd+bwd kernel by kernel (benchmarks/profile_la2.py)
#   bash benchmarks/gpu_suite.sh ncu [SHAPE]  # Nsight Compute report of every LA2 kernel at one BxTxHxDxE shape
#   bash benchmarks/gpu_suite.sh with TNL_LA2_ALGO=fused kernels   # any step with one more environment variable
#   bash benchmarks/gpu_suite.sh decode       # decode ms/token, tnl_385m vs llama_385m, 1K..128K context    (~3 min)
#   bash benchmarks/gpu_suite.sh decode_throughput   # batch-64 decode tokens/s, 1K..128K: TNL (CUDA graph) vs
#                                             # LLaMA static KV cache, eager and torch.compile'd            (~6 min)
#   bash benchmarks/gpu_suite.sh throughput   # training tokens/s + peak memory over context 1K..64K          (~5 min)
#   bash benchmarks/gpu_suite.sh memory       # tnl_1b peak memory vs context, with/without checkpointing    (~2 min)
#   bash benchmarks/gpu_suite.sh train        # short tnl_385m / llama_385m runs on gutenberg: tokens/s, MFU  (~4 min)
#   bash benchmarks/gpu_suite.sh data         # tokenize gutenberg (needs TNL_DATA_ROOT)                       (~1 min)
#   bash benchmarks/gpu_suite.sh repro tnl    # repro_small for one model (tnl | llama) + held-out eval + tasks
#   bash benchmarks/gpu_suite.sh compare      # repro_small curves + table from both runs
#   bash benchmarks/gpu_suite.sh reproduce FIGURE [args]   # scripts/reproduce.py: measure into $RESULTS/reproduction
#   bash benchmarks/gpu_suite.sh repro_seed tnl 1235       # one more repro_small seed: train, extrapolation, tasks
#                                                          # (~4 H100 minutes; files in $RESULTS/reproduction)
#   bash benchmarks/gpu_suite.sh scale tnl_1b 0,1,2,3 100          # data-parallel run on GPUs 0-3 (deepspeed launcher)
#   bash benchmarks/gpu_suite.sh seqpar tnl_1b 0,1,2,3 524288 3    # sequence parallel, P = 4, 512K context
#   bash benchmarks/gpu_suite.sh scale_report # scaling table + loss plot from runs/scale_*
#
#   bash benchmarks/gpu_suite.sh parallel "tests; train" "decode; throughput" "repro tnl" "repro llama"
#       runs each quoted group (steps separated by ';') in order on its own GPU (CUDA_VISIBLE_DEVICES=0, 1, ...),
#       all groups at once; group i logs to $RESULTS/gpu<i>.log. A failed step is logged and the group goes on.
#
# Folders: tests, pytest -> gpu_tests (logs); kernels, tune, shapes, profile, ncu -> kernels; bench_train,
# throughput, memory, train -> training; decode, decode_throughput -> decode; scale, seqpar, scale_report -> scaling;
# repro, compare, reproduce, repro_seed -> reproduction.
#
# Environment: RESULTS (base of the topic folders), PYTHON, STEPS (train step count), REPRO_STEPS (repro_small step
# count), TASK_LIMIT (documents per zero-shot task), TNL_DATA_ROOT / TNL_EVAL_ROOT (corpora and task files).
# fla-core and lightning-attn are optional competitors in `kernels` (reported as missing when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
export RESULTS=${RESULTS:-benchmarks/results}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"/{kernels,training,decode,scaling,reproduction,gpu_tests}
# stem TOPIC WHAT [TAG] -> $RESULTS/TOPIC/WHAT[_TAG]_<gpu>_<UTC stamp>: names for files that other programs write
stem() { "$PY" benchmarks/results_io.py stem "$@"; }

step=${1:?usage: gpu_suite.sh tests|kernels|tune|decode|throughput|memory|train|data|repro MODEL|compare|parallel GROUP...}
shift
case $step in
  tests)
    log=$(stem gpu_tests gpu_tests_all).log
    "$PY" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$log" ;;
  pytest)
    log=$(stem gpu_tests gpu_tests_pytest).log
    "$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log" ;;
  bench_train)
    "$PY" benchmarks/bench_train.py --out "$RESULTS/training" "$@" ;;
  kernels)
    "$PY" benchmarks/bench_kernels.py --out "$RESULTS/kernels" "$@" ;;
  shapes)
    "$PY" benchmarks/bench_la2_shapes.py --out "$RESULTS/kernels" "$@" ;;
  profile)
    "$PY" benchmarks/profile_la2.py --out "$RESULTS/kernels" "$@" ;;
  ncu)
    # Nsight Compute on every LA2 kernel of one fwd+bwd at one shape (default: the shape of record at T = 64K):
    # speed of light, memory, occupancy, warp stalls; clocks left alone. Text report into $RESULTS/kernels.
    shape=${1:-1x65536x16x128x128}
    report=$(stem kernels "ncu_la2_$shape").txt
    ncu --clock-control none --kernel-name regex:la2_ --launch-count 12 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section WarpStateStats --section SchedulerStats \
      "$PY" benchmarks/profile_la2.py --shapes "$shape" --iters 1 --no-breakdown \
      > "$report" 2>&1 ;;
  with)
    # with VAR=VALUE STEP [args]: one step with an extra environment variable (e.g. TNL_LA2_ALGO=fused)
    assign=${1:?usage: gpu_suite.sh with VAR=VALUE STEP [args]}; shift
    env "$assign" bash "$0" "$@" ;;
  tune)
    table=$(stem kernels la2_tuned).json
    cp kernels/tnl_kernels/la2_tuned.json "$table"  # tuned over a copy: the other GPUs' entries stay in it
    "$PY" benchmarks/tune_la2.py --out "$table" --log-dir "$RESULTS/kernels" "$@" ;;
  decode)
    "$PY" benchmarks/bench_decode.py --out "$RESULTS/decode" "$@" ;;
  decode_throughput)
    # the throughput table alone (its own files, tag throughput); at batch 64 LLaMA's KV cache is OOM from 32K
    "$PY" benchmarks/bench_decode.py --no-latency --throughput-batch 64 --contexts 1024 8192 32768 131072 \
      --tag throughput --out "$RESULTS/decode" "$@" ;;
  throughput)
    "$PY" benchmarks/bench_train.py --models tnl_385m,llama_385m --out "$RESULTS/training" ;;
  memory)
    # Single-GPU check of docs/sequence_parallel.md's memory model: one sequence per step (B = 1).
    "$PY" benchmarks/bench_train.py --models tnl_1b --seq-lens 8192,16384,32768 --tokens 1 --warmup 1 --steps 2 \
      --out "$RESULTS/training" --tag memory
    "$PY" benchmarks/bench_train.py --models tnl_1b --seq-lens 16384,65536,131072 --tokens 1 --warmup 1 --steps 2 \
      --grad-ckpt --out "$RESULTS/training" --tag memory ;;
  train)
    # Equal tokens for both models; data=gutenberg needs TNL_DATA_ROOT (or data.root=) pointing at the corpora.
    for exp in tnl_385m_h100 llama_385m_h100; do
      "$PY" scripts/train.py experiment=$exp data=gutenberg run_dir="runs/$exp" trainer.max_steps="${STEPS:-60}" "$@"
      cp "runs/$exp/metrics.jsonl" "$(stem training "${exp}_metrics").jsonl"
    done
    "$PY" scripts/compare_runs.py runs/tnl_385m_h100 runs/llama_385m_h100 \
      --out "$(stem training loss_tnl_385m_vs_llama_385m)" ;;
  data)
    "$PY" scripts/prepare_data.py data=gutenberg "$@" ;;
  repro)
    name=${1:?usage: gpu_suite.sh repro tnl|llama [overrides...]}; shift
    case $name in tnl) model=tnl_385m ;; llama) model=llama_385m ;; *) echo "repro: tnl or llama" >&2; exit 2 ;; esac
    run=runs/repro_small_$name
    "$PY" scripts/train.py experiment=repro_small model=$model run_dir=$run \
      ${REPRO_STEPS:+trainer.max_steps=$REPRO_STEPS} "$@"
    cp "$run/metrics.jsonl" "$(stem reproduction "repro_small_${name}_metrics").jsonl"
    # held-out loss through the DeepSpeed checkpoint and through the HF export (the same number), then the tasks:
    # tnl's own scorer and lm-evaluation-harness (when installed) on the local task files
    for src in checkpoint hf; do
      "$PY" scripts/eval.py --run "$run" --source $src --max-batches 40 --no-progress \
        --out "$(stem reproduction "repro_small_${name}_val_$src").json" || true
    done
    evals=${TNL_EVAL_ROOT:-../shared/evals}
    "$PY" scripts/eval.py --hf "$run/hf" --data-dir "$evals" --tasks all --limit "${TASK_LIMIT:-1000}" --no-progress \
      --out "$(stem reproduction "repro_small_${name}_tasks").json" || true
    if "$PY" -c "import lm_eval" 2>/dev/null; then
      "$PY" scripts/eval.py --hf "$run/hf" --data-dir "$evals" --tasks all --limit "${LMEVAL_LIMIT:-200}" \
        --backend lm-eval --no-progress --out "$(stem reproduction "repro_small_${name}_lm_eval").json" || true
    fi ;;
  scale)
    # One data-parallel run through the deepspeed launcher on the GPUs listed (e.g. 0,1,2,3): fixed per-GPU batch
    # (8 x 2048 tokens), ZeRO-2 unless overridden (deepspeed=zero3 for tnl_3b).
    model=${1:?usage: gpu_suite.sh scale MODEL GPU_LIST STEPS [overrides]}; gpus=${2:?GPU list}; n=$3; shift 3
    count=$(tr ',' '\n' <<< "$gpus" | wc -l)
    run=runs/scale_${model}_${count}gpu
    env -u CUDA_VISIBLE_DEVICES deepspeed --include "localhost:$gpus" --master_port $((29500 + ${gpus%%,*})) \
      scripts/train.py model=$model data=gutenberg deepspeed=zero2 run_dir=$run trainer.max_steps=$n \
      trainer.seq_len=2048 trainer.micro_batch_size=8 trainer.grad_accum=1 trainer.save_every=0 trainer.eval_every=0 \
      trainer.log_every=10 trainer.export_hf=false "$@"
    cp "$run/metrics.jsonl" "$(stem scaling "scale_${model}_${count}gpu_metrics").jsonl" ;;
  seqpar)
    # tnl at a long context with sequence parallelism over the GPUs listed (P = their number), activation
    # checkpointing on; reports tokens/s and the peak memory per GPU in the run's log.
    model=${1:?usage: gpu_suite.sh seqpar MODEL GPU_LIST SEQ_LEN STEPS [overrides]}; gpus=${2:?GPU list}
    len=${3:?seq len}; n=${4:?steps}; shift 4
    count=$(tr ',' '\n' <<< "$gpus" | wc -l)
    run=runs/seqpar_${model}_${count}gpu_$len
    env -u CUDA_VISIBLE_DEVICES deepspeed --include "localhost:$gpus" --master_port $((29600 + ${gpus%%,*})) \
      scripts/train.py model=$model data=gutenberg deepspeed=zero2 run_dir=$run parallel.sequence=$count \
      trainer.seq_len=$len trainer.micro_batch_size=1 trainer.grad_accum=1 trainer.max_steps=$n trainer.save_every=0 \
      trainer.eval_every=0 trainer.log_every=1 trainer.export_hf=false trainer.cu_seqlens=true \
      model.gradient_checkpointing=true "$@"
    cp "$run/metrics.jsonl" "$(stem scaling "seqpar_${model}_${count}gpu_${len}_metrics").jsonl" ;;
  scale_report)
    specs=()
    for d in runs/scale_*gpu; do
      [[ -f $d/metrics.jsonl ]] || continue
      b=${d#runs/scale_}; specs+=("${b%_*gpu}:$(sed 's/.*_\([0-9]*\)gpu$/\1/' <<< "$b"):$d")
    done
    "$PY" scripts/scaling_report.py --out "$(stem scaling data_parallel_scaling)" "${specs[@]}" ;;
  compare)
    "$PY" scripts/compare_runs.py runs/repro_small_tnl runs/repro_small_llama \
      --out "$(stem reproduction repro_small_tnl_vs_llama)" ;;
  reproduce)
    "$PY" scripts/reproduce.py "$@" --results "$RESULTS/reproduction" ;;
  repro_seed)
    # Train repro_small for one model and seed, then evaluate its final checkpoint in one eval.py call: held-out
    # loss at contexts 512..16K (length extrapolation) and the zero-shot tasks. Measures only (no matplotlib needed
    # here): redraw the figures with `scripts/reproduce.py all --redraw` where the files land.
    name=${1:?usage: gpu_suite.sh repro_seed tnl|llama SEED [train overrides]}; seed=${2:?seed}; shift 2
    "$PY" scripts/reproduce.py loss --models "$name" --seeds "$seed" --no-draw --results "$RESULTS/reproduction" "$@"
    "$PY" scripts/reproduce.py extrapolation --with-tasks --tasks-limit "${TASK_LIMIT:-500}" --models "$name" \
      --seeds "$seed" --no-draw --results "$RESULTS/reproduction" ;;
  parallel)
    pids=()
    i=0
    for group in "$@"; do
      ( export CUDA_VISIBLE_DEVICES=$i
        IFS=';' read -r -a cmds <<< "$group"
        for c in "${cmds[@]}"; do
          read -r -a w <<< "$c"
          [[ ${#w[@]} -gt 0 ]] || continue
          echo "== gpu$i: ${w[*]} ($(date -u +%H:%M:%S))"
          bash "$0" "${w[@]}" || echo "== gpu$i: ${w[*]} FAILED rc=$?"
        done ) > "$RESULTS/gpu$i.log" 2>&1 &
      pids+=($!)
      i=$((i + 1))
    done
    for p in "${pids[@]}"; do wait "$p" || true; done ;;
  *)
    echo "gpu_suite: unknown step '$step'" >&2; exit 2 ;;
esac
