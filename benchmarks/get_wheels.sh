#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels a bare GPU machine without network needs for the
# benchmarks and the DeepSpeed / QLoRA / Liger paths, into wheels/ (ignored by git; ~50 MB, under the 64 MiB a
# device run may carry). Then on the GPU machine: `bash benchmarks/gpu_setup.sh`.
#   bash benchmarks/get_wheels.sh [PYTHON_VERSION]     # the GPU machine's Python, default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p wheels
get() {  # binary wheels for the GPU machine's Python and platform, without their dependencies
  pip download -q --no-deps --only-binary=:all: --python-version "$py" --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
    -d wheels "$@"
}
get "bitsandbytes>=0.45" liger-kernel             # QLoRA's 4-bit layers, fused kernels
get hjson msgpack ninja py-cpuinfo einops          # deepspeed's imports
get pydantic pydantic-core annotated-types typing-inspection  # deepspeed's config (accelerate imports it)
get sentencepiece pyyaml typer rich click shellingham markdown-it-py mdurl pygments  # llavatune's own
# DeepSpeed ships an sdist only: build a pure-Python wheel (its CUDA ops are JIT-built on first use)
if ! ls wheels/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 pip wheel -q --no-deps --no-build-isolation -w wheels "deepspeed==$(python -c \
    'import importlib.metadata as m; print(m.version("deepspeed"))' 2>/dev/null || echo 0.19.8)"
fi
du -sh wheels
ls wheels
