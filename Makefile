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

# The main job on the embedded tiny default. (The `demo` verb will replace these two steps.)
OUT ?= runs/demo
demo: install
	$(BIN)/llavatune build --preset tiny --out $(OUT)/tiny-llava --overwrite
	$(BIN)/llavatune info $(OUT)/tiny-llava

.PHONY: install test demo
