"""Verb `merge`: fold a LoRA run or checkpoint into its base and write a plain llava-hf checkpoint.

    llavatune merge runs/tiny-lora --out models/tiny-tuned
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from rich.console import Console

from llavatune.config import read_run_config, save_run_config
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib
from llavatune.model.save import check_out_dir, save_model, write_atomically

console = Console(stderr=True, soft_wrap=True)  # messages: the terminal wraps them, a log keeps them whole


@dataclasses.dataclass
class MergeConfig:
    run: Path                        # a run folder (its final/ or newest checkpoint) or one checkpoint
    out: Path                        # must not exist, or be empty (unless overwrite)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the base is reloaded in this dtype, never 4-bit
    overwrite: bool = False


def main(cfg: MergeConfig) -> Path:
    check_out_dir(cfg.out, cfg.overwrite)
    adapter = loadlib.resolve(cfg.run)
    if not loadlib.is_adapter(adapter):
        raise LlavatuneError(f"{adapter} holds full weights, not an adapter: it is already a plain checkpoint "
                             "(load or copy it as is).")
    base = loadlib.base_of(adapter)
    with console.status(f"merging {adapter} into {base}"):
        model, processor = loadlib.load(base, adapter=adapter, dtype=loadlib.DTYPES[cfg.dtype])
        merged = model.merge_and_unload()
    run = read_run_config(adapter) or {}

    def write(folder: Path) -> None:
        save_model(merged, processor, folder)
        save_run_config(folder, "merge", cfg, model={**run.get("model", {}), "merged_from": str(adapter.resolve())},
                        source_run=run.get("config"))

    write_atomically(cfg.out, cfg.overwrite, write)
    console.print(f"[green]merged[/green] {adapter} into {cfg.out}")
    return cfg.out
