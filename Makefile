# pxd: `make demo` and `make test` do all set-up on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline data: ../shared/data beside the checkout when it exists.
SHARED_DATA := $(abspath ../shared/data)
export PXD_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job on the shipped models: Table 1 with the adaptive column, CIFAR-10 test images.
demo: $(STAMP)
	$(BIN)/pxd bench --attack all --eps-attack 2,8,16 --n 100 --adaptive-n 50 --adaptive-steps 20 \
	  --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check src tests

bench: $(STAMP)
	$(BIN)/pxd bench --speed --out bench-out/speed.json

clean:
	rm -rf $(VENV) demo-out bench-out
