# Two entry points: `make train` and `make test`. Both create .venv and install the
# package when it is missing or older than pyproject.toml; `make test` adds the dev extras
# (pytest, hypothesis, onnx, onnxruntime, the linters), which the main job does not need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: train test bench setup lint

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: these builds lie on the machine's disk and install in about a minute.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e .
	# Build the compiled CPU kernels now (about 35 s) rather than in the first call; a failure
	# only warns, and the PyTorch-op path takes over.
	$(PY) -c "import frcnn.native; frcnn.native.kernels()"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV_STAMP)

train: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/frcnn train

# Passive OpenMP waits: spinning threads stall each other when the cores are shared.
test: $(DEV_STAMP) lint
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest

# ruff (rules in pyproject.toml) over the Python, clang-format (.clang-format) over the kernels.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror src/frcnn/csrc/*.cpp src/frcnn/csrc/*.h

bench: $(STAMP)
	$(PY) benchmarks/anchor_targets.py --warm-heap
