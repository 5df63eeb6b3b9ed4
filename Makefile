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

# The oldest transformers / peft / accelerate that pyproject.toml allows (the GPU machine runs transformers
# 5.17): the tests that lean on their APIs most, in a venv of its own. CI runs it after `make test`.
FLOOR := "transformers==5.17.0" "peft==0.18.0" "accelerate==1.10.0"
test-floor:
	$(PY) -m venv .venv-floor
	.venv-floor/bin/pip install -q --upgrade pip
	.venv-floor/bin/pip install -q "torch==2.13.0"
	.venv-floor/bin/pip install -q -e ".[dev]" $(FLOOR)
	PATH="$(CURDIR)/.venv-floor/bin:$$PATH" .venv-floor/bin/pytest -p no:cacheprovider tests/test_build.py \
		tests/test_convert.py tests/test_hub.py tests/model tests/training/test_train.py tests/training/test_validate.py tests/test_evaluate.py \
		tests/training/test_distributed.py::test_sharded_runs_read_the_weights_on_rank_0_only

.PHONY: install test demo test-floor
