#!/usr/bin/env bash
# Install a bundle made by scripts/make_wheelhouse.sh on a node without network access.
#
#   bash scripts/install_wheelhouse.sh WHEELHOUSE [TARGET_DIR]
#
# Without TARGET_DIR the wheels go into the current Python environment (python3 -m pip, or $PYTHON). With TARGET_DIR
# they go into that folder (add it to PYTHONPATH): useful where the system environment is read-only.
# The node must already have torch, triton and transformers; the script checks the result by importing.
set -euo pipefail
WHEELHOUSE=${1:?usage: install_wheelhouse.sh WHEELHOUSE [TARGET_DIR]}
TARGET=${2:-}
PYTHON=${PYTHON:-python3}
ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1 || { echo "install_wheelhouse: no wheels in $WHEELHOUSE" >&2; exit 1; }

args=(-q --no-index --no-deps --no-cache-dir --disable-pip-version-check --find-links "$WHEELHOUSE")
if [[ -n $TARGET ]]; then
  args+=(--upgrade --target "$TARGET")
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -m pip install "${args[@]}" "$WHEELHOUSE"/*.whl
"$PYTHON" - <<'PY'
import importlib
mods = ["torch", "triton", "transformers", "deepspeed", "hydra", "omegaconf", "sentencepiece", "safetensors", "tqdm",
        "wandb", "tnl", "tnl_kernels"]
for name in mods:
    mod = importlib.import_module(name)
    print(f"  {name:14s} {getattr(mod, '__version__', '')}")
print("install_wheelhouse: all imports ok")
PY
