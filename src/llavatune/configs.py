"""Verb `configs`: list, show and copy the shipped recipes, and every key a recipe may set.

    llavatune configs list
    llavatune configs show tiny-lora
    llavatune configs copy qwen15-4b-clip336-lora my-recipe.yaml
    llavatune configs keys
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import shutil
import tokenize
import types
import typing
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


def keys(cls=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key of a training recipe, nested ones as `lora.r`; the meaning is
    the field's comment in the config's source, so the listing cannot drift from the code."""
    if cls is None:
        from llavatune.train import TrainConfig
        cls = TrainConfig
    hints, notes, out = typing.get_type_hints(cls), _field_comments(cls), []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        nested = next((a for a in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(a)), None)
        if nested is not None:  # lora: LoraSpec, build: BuildSpec | None
            out += keys(nested, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default) if isinstance(f.default, str) else str(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = str(f.default_factory())
        else:
            default = "(required)"
        out.append((prefix + f.name, _type_name(kind), default, notes.get(f.name, "")))
    return out


def _type_name(kind) -> str:
    """Literal['a', 'b'] -> 'a | b'; Path | None -> 'path or none'; list[str] as it is written."""
    if typing.get_origin(kind) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(kind))
    if typing.get_origin(kind) is types.UnionType:
        return " or ".join(_type_name(a) for a in typing.get_args(kind))
    if kind is type(None):
        return "none"
    return "path" if kind is Path else str(kind) if typing.get_args(kind) else kind.__name__


def _field_comments(cls) -> dict[str, str]:
    """Each field's trailing comment, with the comment lines under it that continue it ('#   ...')."""
    notes: dict[str, str] = {}
    field, line_of_field = None, -1
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and field != tok.string and tok.start[0] != line_of_field:
            field, line_of_field = tok.string, tok.start[0]
        elif tok.type == tokenize.COMMENT and field is not None:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] == line_of_field:
                notes[field] = text
            elif tok.string.startswith("#   ") and field in notes:
                notes[field] += " " + text
    return notes
