"""Verb `configs`: list, show and copy the shipped recipes.

    llavatune configs list
    llavatune configs show tiny-lora
    llavatune configs copy qwen15-4b-clip336-lora my-recipe.yaml
"""

from __future__ import annotations

import difflib
import shutil
from importlib import resources
from pathlib import Path

from llavatune.errors import LlavatuneError


def recipe_dir() -> Path:
    return Path(str(resources.files("llavatune") / "recipes"))


def names() -> list[str]:
    """Training recipes by name, then the DeepSpeed settings as deepspeed/<strategy>.json."""
    return [*sorted(p.stem for p in recipe_dir().glob("*.yaml")),
            *sorted(f"deepspeed/{p.name}" for p in (recipe_dir() / "deepspeed").glob("*.json"))]


def path_of(name: str) -> Path:
    """A shipped recipe by name (with or without .yaml), or a shipped deepspeed/<strategy>.json."""
    path = recipe_dir() / (name if name.endswith(".json") else f"{name.removesuffix('.yaml')}.yaml")
    if not path.is_file():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise LlavatuneError(f"no recipe '{name}'.{hint} Shipped recipes: {', '.join(names())}.")
    return path


def resolve(recipe: str) -> Path:
    """A recipe argument: an existing YAML file, else a shipped recipe name."""
    path = Path(recipe)
    return path if path.is_file() else path_of(recipe)


def summary(name: str) -> str:
    """The first comment line of a recipe."""
    if name.endswith(".json"):
        return "DeepSpeed settings for deepspeed_config= (batch sizes, accumulation, clipping come from the run)"
    for line in path_of(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy(name: str, dst: Path, overwrite: bool = False) -> Path:
    dst = Path(dst)
    if dst.is_dir():
        dst = dst / path_of(name).name
    if dst.exists() and not overwrite:
        raise LlavatuneError(f"{dst} exists; pass --overwrite to replace it.")
    shutil.copyfile(path_of(name), dst)
    return dst
