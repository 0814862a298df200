#!/usr/bin/env bash
# Refresh the lock of the CPU test environment: resolve the newest versions that pyproject.toml's ranges allow, in a
# fresh virtual environment, and write them as exact pins to requirements/lock-py<MAJOR><MINOR>-cpu.txt.
#
#   make lock                      # or: bash scripts/lock.sh [PYTHON]
#
# `make test` (and CI) install from that file; `make test-latest` ignores it, to see the next upstream break first.
# torch is the CPU build named by TORCH_CPU (the default torch wheel on PyPI is a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-${PYTHON:-python3}}
TORCH_CPU=${TORCH_CPU:-torch==2.13.0+cpu}
tag=$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
out=requirements/lock-$tag-cpu.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "lock: resolving the newest allowed versions in a fresh venv ($("$PYTHON" --version), $TORCH_CPU)"
"$PYTHON" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip "setuptools>=64" wheel
"${pip[@]}" "$TORCH_CPU"
"${pip[@]}" --no-build-isolation "deepspeed>=0.15"   # an sdist whose setup imports torch
"${pip[@]}" ".[dev,eval]"
{
  echo "# Exact versions of the CPU test environment ($tag, $TORCH_CPU), resolved from pyproject.toml's ranges."
  echo "# Made by \`make lock\` (scripts/lock.sh) on $(date -u +%Y-%m-%d); used as pip constraints by \`make install\`."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -viE '^(pip|tnl)==' | LC_ALL=C sort -f
} > "$tmp/lock.txt"
mkdir -p requirements
mv "$tmp/lock.txt" "$out"
echo "lock: wrote $out ($(grep -vc '^#' "$out") pins)"
git diff --stat -- "$out" 2>/dev/null || true
