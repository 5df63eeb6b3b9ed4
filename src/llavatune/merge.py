"""Verb `merge`: fold a LoRA run or checkpoint into its base and write a plain llava-hf checkpoint.

    llavatune merge runs/tiny-lora --out models/tiny-tuned
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from llavatune import hub, progress
from llavatune.config import read_run_config, save_run_config
from llavatune.data import images as imagelib
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib
from llavatune.model.save import check_out_dir, save_model, write_atomically
from llavatune.model.trainable import unwrap

console = progress.messages
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}  # of the largest value. float32 merges measure
#   ~1e-6; in half precision the merged weights are rounded (the demo's model: 3e-3 in float16, 2e-2 in bfloat16), so
#   there the check catches gross losses only: a dropped projector or adapter moved the demo's logits by 0.9


@dataclasses.dataclass
class MergeConfig:
    run: Path                        # a run folder (its final/ or newest checkpoint) or one checkpoint
    out: Path                        # must not exist, or be empty (unless overwrite)
    base: Path | None = None         # the model the adapter was trained on, where the folder the run names has moved
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the base is reloaded in this dtype, never 4-bit
    overwrite: bool = False


def main(cfg: MergeConfig) -> Path:
    check_out_dir(cfg.out, cfg.overwrite)
    adapter = loadlib.resolve(cfg.run)
    if not loadlib.is_adapter(adapter):
        raise LlavatuneError(f"{adapter} holds full weights, not an adapter: it is already a plain checkpoint "
                             "(load or copy it as is).")
    base = loadlib.resolve(cfg.base) if cfg.base is not None else loadlib.base_of(adapter)
    with console.status(f"merging {adapter} into {base}"):
        model, processor = loadlib.load(base, adapter=adapter, dtype=loadlib.DTYPES[cfg.dtype])
        before = probe(model, processor)
        merged = model.merge_and_unload()
        difference = check_same(before, probe(merged, processor), cfg.dtype, adapter)
    console.print(f"checked: the merged model gives the adapter's outputs on a probe (largest difference "
                  f"{difference:.1e} of the largest value)")
    run = read_run_config(adapter) or {}
    model_info = {**run.get("model", {}), "merged_from": str(adapter.resolve())}
    if cfg.base is not None:  # the base it was merged into, not the moved one the run names
        model_info.pop("base_revision", None)
        model_info["base"] = str(cfg.base) if hub.is_hub_id(cfg.base) else str(base.resolve())

    def write(folder: Path) -> None:
        save_model(merged, processor, folder)
        save_run_config(folder, "merge", cfg, model=model_info, source_run=run.get("config"))

    write_atomically(cfg.out, cfg.overwrite, write)
    console.print(f"[green]merged[/green] {adapter} into {cfg.out}")
    return cfg.out


@torch.no_grad()
def probe(model, processor) -> dict[str, torch.Tensor]:
    """What folding an adapter in must leave as it is, as float32: the projected features of a fixed noise image
    (vision tower, projector, an xtuner run's vision LoRA) and the logits of a short text (the language model). The
    text holds no image, so that a 7B model on a CPU checks in seconds, not the minutes of 576 image tokens."""
    llava = unwrap(model)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels = imagelib.pixels([Image.fromarray(noise)], processor.image_processor)
    out = llava.model.get_image_features(pixels.to(next(llava.model.vision_tower.parameters()).dtype),
                                         vision_feature_layer=llava.config.vision_feature_layer,
                                         vision_feature_select_strategy=llava.config.vision_feature_select_strategy)
    ids = processor.tokenizer("Describe what the picture shows, in one sentence.", return_tensors="pt").input_ids
    return {"image features": torch.stack(out.pooler_output).float(), "logits": llava(input_ids=ids).logits.float()}


def check_same(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], dtype: str, adapter: Path) -> float:
    """The merged model answers the probe as the adapter did, within rounding: a largest difference above TOLERANCE
    of the largest value is a merge that lost or changed something, and nothing is written. Returns the largest."""
    largest = 0.0
    for name, a in before.items():
        difference = float((after[name] - a).abs().max() / a.abs().max().clamp_min(1e-6))
        largest = max(largest, difference)
        if difference > TOLERANCE[dtype]:
            raise LlavatuneError(
                f"merging {adapter} changed the model: the {name} of a fixed probe differ by {difference:.1e} of "
                f"their largest value (rounding in {dtype} stays under {TOLERANCE[dtype]:.0e}); nothing was written. "
                "Report it with `llavatune info` (the peft and transformers versions); the adapter itself loads "
                "unmerged in chat, eval and serve (--adapter).")
    return largest
