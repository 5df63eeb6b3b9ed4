"""Load llava-hf checkpoints, run folders and adapter checkpoints for training, merging and inference.

A path may be: a llava-hf folder; a checkpoint holding a PEFT adapter (its base is named in its
run_config.yaml); or a run folder (its `final/`, else its newest complete checkpoint). The kind is read from
the files, never guessed from the folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llavatune import hub
from llavatune.config import read_run_config
from llavatune.errors import LlavatuneError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"


def pick_device(name: str) -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; anything else as torch spells it ('cuda:1'). A GPU
    asked for and not there is an error, not a quiet run on the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        import os

        raise LlavatuneError(
            f"device={name}, but torch sees no GPU (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
            f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Check the GPU ids with "
            "nvidia-smi; on a machine without GPUs use device=cpu, or --procs N for several CPU processes.")
    return device


def resolve(path: Path | str) -> Path:
    """A run folder -> its final/ or newest complete checkpoint; a hub id -> its folder in the hub cache
    (downloaded when missing); anything else unchanged."""
    from llavatune.training.checkpoint import latest

    if hub.is_hub_id(path):
        return hub.local_copy(str(path))
    path = Path(path)
    if not path.exists():
        raise LlavatuneError(f"{path}: no such model, run or checkpoint folder.")
    if (path / "final").is_dir():
        return path / "final"
    if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
        found = latest(path)
        if found is not None:
            return found
    return path


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def recorded_base(adapter_dir: Path) -> str | None:
    """The base model an adapter checkpoint names, from its run_config.yaml (or adapter_config); it may be gone."""
    run = read_run_config(adapter_dir) or {}
    base = (run.get("model") or {}).get("base")
    if base is None:
        base = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    return base


def base_of(adapter_dir: Path, download: bool = True) -> Path:
    """The base model an adapter checkpoint was trained on, which must be there: a folder, or a hub id at the
    revision the run trained on (download=False: only from the hub cache)."""
    base = recorded_base(adapter_dir)
    if base and hub.is_hub_id(base):
        revision = ((read_run_config(adapter_dir) or {}).get("model") or {}).get("base_revision")
        return hub.local_copy(base, revision, download)
    if not base or not Path(base).exists():
        raise LlavatuneError(f"{adapter_dir}: its base model {base!r} is not there; an adapter needs the model it "
                             "was trained on. Name where it is now (`llavatune merge RUN --base DIR`; `llavatune chat "
                             "DIR --adapter RUN`, eval and serve alike), or restore that folder.")
    return Path(base)


def quantization_config(compute_dtype: torch.dtype):
    """nf4 with double quantization for the LLM; vision tower, projector and lm_head stay in full precision."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LlavatuneError("4-bit loading needs bitsandbytes and a CUDA GPU: pip install 'llavatune[gpu]'") from None
    if not torch.cuda.is_available():
        raise LlavatuneError("4-bit loading (qlora, --load-4bit) needs a CUDA GPU; on a CPU use method=lora.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])


def load_base(path: Path | str, dtype: torch.dtype = torch.float32, load_4bit: bool = False, device: str = "cpu"):
    """(LlavaForConditionalGeneration, processor) from a llava-hf folder. device="meta": the model's shapes and
    dtypes without its values (no weight is read), for a rank that gets them from rank 0 (Ranks.wrap)."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    path = Path(path)
    if not (path / "config.json").is_file():
        raise LlavatuneError(f"{path}: no config.json; expected a llava-hf checkpoint (see `llavatune build`).")
    if device == "meta":
        with torch.device("meta"):
            model = LlavaForConditionalGeneration._from_config(AutoConfig.from_pretrained(path), dtype=dtype)
        return model, AutoProcessor.from_pretrained(path)
    # straight from the files to the device, tensor by tensor: no whole CPU copy first (a 13B model in bf16 is
    # 26 GB of host memory, per process under DDP)
    kwargs = {"dtype": dtype, "device_map": {"": str(device)}}
    if load_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
    model = LlavaForConditionalGeneration.from_pretrained(path, **kwargs)
    return model, AutoProcessor.from_pretrained(path)


def load(path: Path | str, adapter: Path | str | None = None, dtype: torch.dtype = torch.float32,
         load_4bit: bool = False, device: str = "cpu"):
    """(model, processor) for inference: a plain checkpoint, or a base with an adapter attached (not merged)."""
    from peft import PeftModel

    from llavatune.model.trainable import peft_quietly

    path = resolve(path)
    if adapter is None and is_adapter(path):
        path, adapter = base_of(path), path
    model, processor = load_base(path, dtype, load_4bit, device)
    if adapter is not None:
        adapter = resolve(adapter)
        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter).to(device)
        processor = _processor_of(adapter, processor)
    return model.eval(), processor


def _processor_of(folder: Path, fallback):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder) if (folder / "processor_config.json").exists() else fallback
