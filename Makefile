# Two commands from a fresh clone: `make test` and `make demo`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tnl-installed
PYTEST_WORKERS ?= 2

# Without an NVIDIA GPU we want PyTorch's CPU build: the default wheel on PyPI is a ~5 GB CUDA build.
# `torch==X+cpu` is found where a CPU wheel is available (a local wheel folder, or PyTorch's CPU wheel index
# added to PIP_EXTRA_INDEX_URL); otherwise we fall back to the default build with a warning.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_GPU ?= torch>=2.5

.PHONY: install test test-gpu demo lint format wheelhouse clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then echo "tnl: torch already installed in $(VENV)"; \
	elif [ -n "$(HAS_GPU)" ]; then $(PIP) install "$(TORCH_GPU)"; \
	else $(PIP) install "$(TORCH_CPU)" || { echo "tnl: $(TORCH_CPU) not found; installing the default torch build" \
	  "(add PyTorch's CPU wheel index to PIP_EXTRA_INDEX_URL to avoid the CUDA download)"; $(PIP) install "torch>=2.5"; }; fi
	$(PIP) install "setuptools>=64" wheel
	@# DeepSpeed ships as an sdist whose setup imports torch: build it against the torch installed above.
	$(PIP) install --no-build-isolation "deepspeed>=0.15"
	$(PIP) install -e ".[dev,eval]"
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not gpu" -n $(PYTEST_WORKERS) --dist loadfile -q

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -q

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

wheelhouse:
	bash scripts/make_wheelhouse.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
