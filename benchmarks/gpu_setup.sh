#!/usr/bin/env bash
# Prepare a bare GPU machine (torch, transformers, peft, accelerate already there, no network) for the
# benchmarks: install llavatune and the wheels downloaded beside it into wheels/ (`pip download --no-deps
# bitsandbytes liger-kernel deepspeed ...`, see docs/benchmarks.md). Prints what the machine has.
set -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import sys, torch, transformers, peft, accelerate; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
for w in wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr _ -)
  python -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null || python -m pip install -q --no-deps --root-user-action=ignore "$w" 2>&1 | grep -v "^WARNING: Running pip"
done
python -m pip install -q --no-deps --no-build-isolation --root-user-action=ignore -e . 2>&1 | grep -v "^WARNING: Running pip"
python - <<'PY'
import importlib
for mod in ("llavatune.cli", "bitsandbytes", "liger_kernel", "deepspeed", "flash_attn", "matplotlib", "tensorboard", "pyarrow"):
    try:
        importlib.import_module(mod)
        print("ok     ", mod)
    except Exception as err:
        print("MISSING", mod, type(err).__name__, str(err)[:120])
PY
