# pxd: `make demo` and `make test` do all set-up on a fresh clone, installing the exact
# versions in requirements.lock (refresh it with `make lock`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
# Offline data: ../shared/data beside the checkout when it exists.
SHARED_DATA := $(abspath ../shared/data)
export PXD_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: venv demo test lint bench lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q 'pip==$(PIP_VERSION)'
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q -e . --no-deps
	touch $(STAMP)

venv: $(STAMP)

# Re-resolve pyproject.toml's ranges to today's newest releases and pin them with hashes;
# run `make test` after, and commit requirements.lock with what it changed.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q 'pip==$(PIP_VERSION)'
	$(BIN)/python tools/lock.py -o requirements.lock

# The main job on the shipped models: Table 1 with the adaptive column, CIFAR-10 test images.
demo: $(STAMP)
	$(BIN)/pxd bench --attack all --eps-attack 2,8,16 --n 100 --adaptive-n 50 --adaptive-steps 20 \
	  --out demo-out

# Two pytest workers (pytest-xdist): compiling and waiting on subprocesses leave a core idle
# in one process. Whole files per worker, slowest first in tests/conftest.py's order (xdist
# would reorder them by test count).
# `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check src tests

bench: $(STAMP)
	$(BIN)/pxd bench --speed --out bench-out/speed.json

clean:
	rm -rf $(VENV) demo-out bench-out
