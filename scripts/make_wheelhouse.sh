#!/usr/bin/env bash
# Build an offline install bundle for an air-gapped GPU node (CPython 3.12, manylinux x86_64) that already has
# torch, triton and transformers: everything else the project needs, as wheels, plus the tnl wheel itself.
#
#   bash scripts/make_wheelhouse.sh [OUT_DIR]        # default: wheelhouse/
#   then on the node: bash scripts/install_wheelhouse.sh OUT_DIR [TARGET_DIR]
#
# The versions are the lock's (LOCK, default requirements/lock-py311-cpu.txt, the one `make install` follows), for
# the dependency set of the project's installed environment (PYTHON, default .venv/bin/python: run `make install`
# first), fetched again as wheels for the node's platform. Environment: PYTHON, LOCK, PY_VERSION (default 3.12),
# MAX_MB (size budget, default 28), WANDB_SPEC (default: an older, smaller wandb that still supports NumPy 2).
# Left out on purpose: torch, triton, transformers and what they pull in (expected on the node), matplotlib (plots
# are made off the node), and unless WITH_ARROW=1, pyarrow and pandas (large; only `datasets` needs them, and
# training reads pre-tokenized shards without it).
set -euo pipefail

OUT=${1:-wheelhouse}
PYTHON=${PYTHON:-.venv/bin/python}
LOCK=${LOCK:-requirements/lock-py311-cpu.txt}
PY_VERSION=${PY_VERSION:-3.12}
MAX_MB=${MAX_MB:-28}  # zstandard (5.5 MiB) and wandb (9 MiB) are most of it
WANDB_SPEC=${WANDB_SPEC:-wandb==0.17.9}
PLATFORM_ARGS=(--python-version "$PY_VERSION" --implementation cp --only-binary=:all:)
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORM_ARGS+=(--platform "$p")
done
SKIP='matplotlib contourpy fonttools kiwisolver pillow cycler pyparsing'
# datasets imports pyarrow and pandas (~70 MB of wheels): WITH_ARROW=1 bundles them and lifts the budget.
if [[ ${WITH_ARROW:-0} == 1 ]]; then MAX_MB=$((MAX_MB + 80)); else SKIP+=' pyarrow pandas python-dateutil pytz tzdata'; fi

"$PYTHON" -c "import torch, deepspeed, tnl" >/dev/null 2>&1 || {
  echo "make_wheelhouse: $PYTHON lacks torch, deepspeed or tnl; run 'make install' or set PYTHON" >&2; exit 1; }
[[ -f $LOCK ]] || { echo "make_wheelhouse: no lock file $LOCK (set LOCK, or run 'make lock')" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== building wheels: tnl, and DeepSpeed (PyPI has only its sdist)"
ds_version=$(sed -n 's/^deepspeed==//p' "$LOCK")
ds_version=${ds_version:-$("$PYTHON" -c "from importlib.metadata import version; print(version('deepspeed'))")}
rm -rf "$OUT"; mkdir -p "$OUT"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "deepspeed==$ds_version" .

echo "== listing dependencies (installed versions, minus what torch/triton/transformers bring)"
# Dependency closures read from the installed metadata: no resolver run, no multi-GB torch download.
"$PYTHON" - "$LOCK" "$WANDB_SPEC" $SKIP > "$tmp/wanted.txt" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()

def closure(roots, leaves=()):
    seen, todo = {}, [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist.version
        if name in leaves:
            continue
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen

# Only torch, triton, transformers and transformers' direct requirements count as provided: deeper layers differ
# between releases (seen: a node whose huggingface-hub worked without fsspec installed).
provided = closure(["torch", "triton"])
provided |= closure(["transformers"], leaves=set(closure(["transformers"])) - {"transformers"})
provided.pop("fsspec", None)  # torch imports it lazily, so nodes may lack it; datasets needs it
lock = {}
for line in open(sys.argv[1]):
    if "==" in line and not line.startswith("#"):
        n, v = line.strip().split("==", 1)
        lock[norm(n)] = v
skip = {norm(n) for n in sys.argv[3:]} | {"tnl", "deepspeed", "wandb"}
for name, version in sorted(closure(["tnl"], leaves={"wandb"} | set(provided)).items()):
    if name not in provided and name not in skip:
        if lock.get(name, version) != version:
            print(f"make_wheelhouse: {name} {version} is installed, the lock says {lock[name]}: taking the lock's",
                  file=sys.stderr)
        print(f"{name}=={lock.get(name, version)}")
print(sys.argv[2])  # wandb, resolved for the node below
PY
# The pinned wandb has its own dependency set: resolve it for the node's platform.
"$PYTHON" -m pip install -q --dry-run --ignore-installed --target "$tmp/t" --report "$tmp/wandb.json" \
  "${PLATFORM_ARGS[@]}" "$WANDB_SPEC"
"$PYTHON" -c "import json,sys; [print(i['metadata']['name'] + '==' + i['metadata']['version']) for i in json.load(open(sys.argv[1]))['install']]" \
  "$tmp/wandb.json" | grep -viE '^(setuptools|requests|urllib3|idna|certifi|charset-normalizer|pyyaml|psutil|click)==' >> "$tmp/wanted.txt"

echo "== downloading $(sort -u "$tmp/wanted.txt" | wc -l) wheels for CPython $PY_VERSION manylinux x86_64"
while read -r spec; do
  # A few pure-Python dependencies (antlr4 4.9.3, pinned by hydra) exist only as sdists: build those into wheels.
  "$PYTHON" -m pip download -q --no-deps "${PLATFORM_ARGS[@]}" -d "$OUT" "$spec" 2>/dev/null \
    || "$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$spec" 2>/dev/null \
    || { echo "make_wheelhouse: no wheel for $spec" >&2; exit 1; }
done < <(sort -u "$tmp/wanted.txt")
size_kib=$(du -sk "$OUT" | cut -f1)
size_mib=$(awk -v k="$size_kib" 'BEGIN { printf "%.1f", k / 1024 }')
echo "== $OUT: $(ls "$OUT"/*.whl | wc -l) wheels, ${size_mib} MiB"
if (( size_kib > MAX_MB * 1024 )); then
  echo "make_wheelhouse: bundle is ${size_mib} MiB, over the ${MAX_MB} MiB budget" >&2
  exit 1
fi
