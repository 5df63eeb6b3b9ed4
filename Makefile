# `make test` creates .venv on first use, installs the package with its test extras, and runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/llavatune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/llavatune

install: $(BIN)/llavatune

test: install
	$(BIN)/pytest

# The main job, offline on the embedded tiny default: data, stage 1, LoRA stage 2, merge, before/after eval.
OUT ?= runs/demo
demo: install
	$(BIN)/llavatune demo --out $(OUT)

.PHONY: install test demo
