"""Verb `info`: what a llava-hf checkpoint holds, read from its files without loading the weights.

    llavatune info models/tiny
    llavatune info runs/tiny-lora        # a run: its final (or newest) checkpoint; an adapter: with its base
    llavatune info llava-hf/llava-1.5-7b-hf   # a hub id: configs and weight headers only, not the weights
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from pathlib import Path

from rich.table import Table

from llavatune import hub, progress
from llavatune.config import read_run_config
from llavatune.errors import LlavatuneError


@dataclasses.dataclass
class InfoConfig:
    model: Path
    json: bool = False  # print one JSON object instead of a table


def weights(folder: Path) -> tuple[dict[str, tuple[list[int], str]], dict[str, int]]:
    """(tensor name -> (shape, dtype), weight file -> bytes) from the safetensors headers (one file or shards). A
    hub model whose weights are not in the cache is read from its headers on the hub, a few KB per file."""
    from safetensors import safe_open

    files, repo = sorted(folder.glob("*.safetensors")), hub.repo_of(folder)
    if not files and repo:
        return hub.remote_weights(repo, hub.revision_of(folder))
    if not files:
        raise LlavatuneError(f"{folder}: no *.safetensors weights found (is this a llava-hf checkpoint folder?).")
    shapes = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                shapes[name] = (list(sl.get_shape()), sl.get_dtype())
    return shapes, {file.name: file.stat().st_size for file in files}


def describe(folder: Path | str) -> dict:
    """A checkpoint's architecture, parameters and files. A run folder stands for its final (or newest)
    checkpoint; an adapter checkpoint is its base model's description plus an `adapter` entry; a hub id is read
    from its configs and weight headers, without downloading the weights."""
    from llavatune.model import load as loadlib

    folder = hub.local_copy(str(folder), weights=False) if hub.is_hub_id(folder) else loadlib.resolve(folder)
    if loadlib.is_adapter(folder):
        base = loadlib.recorded_base(folder)
        info = {"path": str(folder), "base": str(base)}
        try:  # a hub base is described from the hub cache, never downloaded for this
            info.update((k, v) for k, v in describe(loadlib.base_of(folder, download=False)).items() if k != "path")
        except LlavatuneError:  # the adapter can still be read; merging, chat and eval will need the base back
            info["base"] += " (not found here)"
        trained = (read_run_config(folder) or {}).get("model") or {}
        shapes, sizes = weights(folder)
        info["template"] = trained.get("template") or info.get("template")
        info["adapter"], info["files"] = describe_adapter(folder, shapes), _files(folder, sizes)
        return info
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LlavatuneError(f"{folder}: no config.json; give the folder of a llava-hf checkpoint, "
                             "an adapter checkpoint or a run.")
    config = json.loads(config_path.read_text())
    from llavatune.model.trainable import component

    counts: dict[str, int] = {"vision": 0, "projector": 0, "llm": 0}
    dtypes = set()
    shapes, sizes = weights(folder)
    for name, (shape, dtype) in shapes.items():
        counts[component(name)] += math.prod(shape)
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
        "files": _files(folder, sizes),
    }


def describe_adapter(folder: Path, shapes: dict[str, tuple[list[int], str]]) -> dict:
    """A PEFT adapter checkpoint: its method, rank, targets, parameters per component, and training step."""
    from llavatune.model.trainable import component

    config = json.loads((folder / "adapter_config.json").read_text())
    counts: collections.Counter = collections.Counter()
    for name, (shape, _) in shapes.items():
        counts[component(name)] += math.prod(shape)
    manifest = folder / "checkpoint.json"  # written by training; an adapter from elsewhere has none
    step = json.loads(manifest.read_text())["step"] if manifest.is_file() else None
    targets = config.get("target_modules")  # a list of full module names (a 7B LLaVA: 224), or a regex
    if isinstance(targets, list):
        targets = f"{', '.join(sorted({t.rsplit('.', 1)[-1] for t in targets}))} ({len(targets)} modules)"
    return {"type": config.get("peft_type"), "r": config.get("r"), "alpha": config.get("lora_alpha"),
            "targets": targets,
            "also_trained": ", ".join(config.get("modules_to_save") or []) or "none",
            "parameters": {"total": sum(counts.values()), **counts}, "step": step}


def _files(folder: Path, weight_sizes: dict[str, int]) -> dict[str, int]:
    """Every file's bytes; a hub model's weights, when not downloaded, as the hub gives them."""
    here = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return dict(sorted({**weight_sizes, **here}.items()))


def main(cfg: InfoConfig) -> dict:
    info = describe(cfg.model)
    if cfg.json:
        print(json.dumps(info, indent=2))
        return info
    table = Table(title=str(cfg.model), show_header=False)
    for key, value in info.items():
        if key == "adapter":
            for k, v in value.items():
                table.add_row(f"adapter {k}", _cell(k, v))
        else:
            table.add_row(key, _cell(key, value))
    progress.results.print(table)
    return info


def _cell(key: str, value) -> str:
    if key == "parameters":
        return "  ".join(f"{k} {v:,}" for k, v in value.items())
    if key == "files":
        return "  ".join(f"{k} ({v / 1e6:.1f} MB)" for k, v in value.items())
    return str(value)
