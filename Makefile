# Two commands from a fresh clone: `make test` and `make demo`. Each creates .venv and installs what it needs.
#
# Which versions get installed (DEPS):
#   locked  (default) the exact versions of requirements/lock-<python>-cpu.txt: the same environment on every day
#   latest  the newest versions pyproject.toml's ranges allow, re-resolved on every run (`make test-latest`)
#   lowest  the lowest transformers pyproject.toml allows (requirements/lowest.txt), the rest newest (`make test-lowest`)
# `make lock` refreshes the lock (scripts/lock.sh).
PYTHON ?= python3
DEPS ?= locked
ifeq ($(DEPS),locked)
VENV ?= .venv
else
VENV ?= .venv-$(DEPS)
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_WORKERS ?= 2
PY_TAG := $(shell $(PYTHON) -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null)
LOCK ?= requirements/lock-$(PY_TAG)-cpu.txt
LOWEST := requirements/lowest.txt

# Without an NVIDIA GPU we want PyTorch's CPU build: the default wheel on PyPI is a ~5 GB CUDA build.
# `torch==X+cpu` is found where a CPU wheel is available (a local wheel folder, or PyTorch's CPU wheel index
# added to PIP_EXTRA_INDEX_URL); otherwise we fall back to the default build with a warning.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_GPU ?= torch>=2.5
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.tnl-installed-$(DEPS)

ifeq ($(DEPS),locked)
STAMP_DEPS := pyproject.toml $(wildcard $(LOCK))
UPGRADE :=
else
STAMP_DEPS := pyproject.toml FORCE
UPGRADE := --upgrade --upgrade-strategy eager
endif

.PHONY: install test test-latest test-lowest test-gpu demo lint format lock wheelhouse clean FORCE

install: $(STAMP)

$(STAMP): $(STAMP_DEPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The pins this install follows (none for DEPS=latest). On a GPU machine torch, triton and the CUDA libraries are
	@# left to the GPU build of torch, so their CPU pins are dropped.
	@case "$(DEPS)" in \
	  locked) if [ -f "$(LOCK)" ]; then grep -v '^#' "$(LOCK)" > $(CONSTRAINTS); \
	          else echo "tnl: no lock for $(PY_TAG) ($(LOCK)); installing the newest allowed versions"; : > $(CONSTRAINTS); fi ;; \
	  lowest) grep -v '^#' $(LOWEST) > $(CONSTRAINTS) ;; \
	  latest) : > $(CONSTRAINTS) ;; \
	  *) echo "tnl: DEPS must be locked, latest or lowest, not '$(DEPS)'" >&2; exit 2 ;; \
	esac
	@# torch stays the CPU build whatever DEPS asks (an upgrade would otherwise pull the multi-GB CUDA build).
	@if [ -n "$(HAS_GPU)" ]; then sed -i -E '/^(torch|triton|nvidia-|cuda-)/Id' $(CONSTRAINTS); \
	else sed -i -E '/^torch==/d' $(CONSTRAINTS); echo "$(TORCH_CPU)" >> $(CONSTRAINTS); fi
	@echo "tnl: installing into $(VENV) (DEPS=$(DEPS), $$(grep -c . $(CONSTRAINTS) || true) pins)"
	@if $(PY) -c "import torch" 2>/dev/null; then echo "tnl: torch already installed in $(VENV)"; \
	  sed -i -E '/^torch==/d' $(CONSTRAINTS); $(PY) -c "import torch; print('torch==' + torch.__version__)" >> $(CONSTRAINTS); \
	elif [ -n "$(HAS_GPU)" ]; then $(PIP) install -c $(CONSTRAINTS) "$(TORCH_GPU)"; \
	else $(PIP) install -c $(CONSTRAINTS) "$(TORCH_CPU)" || { echo "tnl: $(TORCH_CPU) not found; installing the default torch build" \
	  "(add PyTorch's CPU wheel index to PIP_EXTRA_INDEX_URL to avoid the CUDA download)"; \
	  sed -i -E '/^torch==/d' $(CONSTRAINTS); $(PIP) install "torch>=2.5"; }; fi
	$(PIP) install -q $(UPGRADE) -c $(CONSTRAINTS) "setuptools>=64" wheel
	@# DeepSpeed ships as an sdist whose setup imports torch: build it against the torch installed above.
	$(PIP) install -q $(UPGRADE) -c $(CONSTRAINTS) --no-build-isolation "deepspeed>=0.15"
	$(PIP) install -q $(UPGRADE) -c $(CONSTRAINTS) -e ".[dev,eval]"
	@$(PY) -c "import importlib.metadata as m; print('tnl: ' + ', '.join(n + ' ' + m.version(n) for n in \
	  ('torch', 'transformers', 'datasets', 'deepspeed', 'triton')))"
	@touch $(STAMP)

FORCE:

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not gpu" -n $(PYTEST_WORKERS) --dist loadfile -q

test-latest:
	$(MAKE) test DEPS=latest

test-lowest:
	$(MAKE) test DEPS=lowest

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -q

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

lock:
	TORCH_CPU="$(TORCH_CPU)" bash scripts/lock.sh $(PYTHON)

wheelhouse: $(STAMP)
	PYTHON=$(PY) bash scripts/make_wheelhouse.sh

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .pytest_cache .ruff_cache build *.egg-info
