#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded corpus, from a fresh clone, in a few minutes on 2 CPU cores:
# prepare data -> train a tiny TNL with the deepspeed launcher -> held-out loss -> HF export -> generate a sample.
# Environment: RUN (run dir, default runs/demo; re-running resumes/finishes it), STEPS (default 600), RANKS (default:
# the number of GPUs, else 2 CPU ranks on gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
STEPS=${STEPS:-600}
if [[ -z ${RANKS:-} ]]; then
  RANKS=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS

echo "== [1/5] prepare data=demo (English text from the running Python's own documentation)"
python scripts/prepare_data.py data=demo

echo "== [2/5] train tnl_tiny: deepspeed launcher, $RANKS ranks, ZeRO-2, $STEPS steps -> $RUN"
deepspeed --num_gpus "$RANKS" scripts/train.py model=tnl_tiny data=demo deepspeed=zero2 run_dir="$RUN" \
  trainer.max_steps="$STEPS" trainer.seq_len=128 trainer.micro_batch_size=8 optim.lr=3e-3 optim.warmup_steps=30 \
  trainer.save_every=100 trainer.eval_every=100 trainer.log_every=25

echo "== [3/5] held-out loss and perplexity of the latest checkpoint"
python scripts/eval.py --run "$RUN" --no-progress

echo "== [4/5] export to Hugging Face format -> $RUN/hf"
python scripts/export_hf.py run_dir="$RUN"

echo "== [5/5] generate from the export with transformers' AutoModelForCausalLM (recurrent decoding)"
python - "$RUN/hf" <<'PY'
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
prompt = "The function returns"
ids = tok(prompt, return_tensors="pt").input_ids
torch.manual_seed(0)
out = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8)
print(f"prompt: {prompt!r}\nsample: {tok.decode(out[0], skip_special_tokens=True)!r}")
PY
echo "== demo finished in $((SECONDS - start)) s: run dir $RUN (metrics.jsonl, checkpoints/, hf/)"
