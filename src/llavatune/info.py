"""Verb `info`: what a llava-hf checkpoint holds, read from its files without loading the weights.

    llavatune info models/tiny
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llavatune.config import read_run_config
from llavatune.errors import LlavatuneError

@dataclasses.dataclass
class InfoConfig:
    model: Path
    json: bool = False  # print one JSON object instead of a table


def tensor_shapes(folder: Path) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype) from the safetensors headers (one file or an index of shards)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LlavatuneError(f"{folder}: no *.safetensors weights found (is this a llava-hf checkpoint folder?).")
    out = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (list(sl.get_shape()), sl.get_dtype())
    return out


def describe(folder: Path) -> dict:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LlavatuneError(f"{folder}: no config.json; give the folder of a llava-hf checkpoint.")
    config = json.loads(config_path.read_text())
    from llavatune.model.trainable import component

    counts: dict[str, int] = {"vision": 0, "projector": 0, "llm": 0}
    dtypes = set()
    for name, (shape, dtype) in tensor_shapes(folder).items():
        n = 1
        for d in shape:
            n *= d
        counts[component(name)] += n
        dtypes.add(dtype)
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    run = read_run_config(folder) or {}
    template = (run.get("model") or {}).get("template") or ("custom" if (folder / "chat_template.jinja").exists()
                                                             else "none")
    return {
        "path": str(folder), "architecture": (config.get("architectures") or ["?"])[0],
        "llm": text.get("model_type"), "vision": vision.get("model_type"),
        "parameters": {"total": sum(counts.values()), **counts},
        "image_tokens": config.get("image_seq_length"), "image_size": vision.get("image_size"),
        "patch_size": vision.get("patch_size"), "feature_layer": config.get("vision_feature_layer"),
        "feature_select": config.get("vision_feature_select_strategy"),
        "projector_act": config.get("projector_hidden_act"), "template": template,
        "dtype": ", ".join(sorted(dtypes)), "vocab_size": text.get("vocab_size"),
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
    }


def main(cfg: InfoConfig) -> dict:
    info = describe(cfg.model)
    if cfg.json:
        print(json.dumps(info, indent=2))
        return info
    table = Table(title=str(cfg.model), show_header=False)
    for key, value in info.items():
        if key == "parameters":
            value = "  ".join(f"{k} {v:,}" for k, v in value.items())
        elif key == "files":
            value = "  ".join(f"{k} ({v / 1e6:.1f} MB)" for k, v in value.items())
        table.add_row(key, str(value))
    Console().print(table)
    return info
