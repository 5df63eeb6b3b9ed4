"""Typed run configs: dataclasses filled from a YAML file plus `key=value` dotted overrides.

Every verb describes its options as a dataclass. `load()` merges, in order, the YAML file, the explicit
command-line flags and the `key=value` overrides, then checks each key against the dataclass: an unknown key
or a value of the wrong type is a `ConfigError` that names the key, lists the valid ones and suggests the
closest. `save_run_config()` writes what was resolved, with package versions, into an output folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import platform
import types
import typing
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from llavatune.errors import ConfigError

C = TypeVar("C")
RUN_CONFIG = "run_config.yaml"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "none", "~"}


def load(cls: type[C], path: Path | str | None = None, overrides: list[str] | None = None,
         flags: dict[str, Any] | None = None) -> C:
    """Resolve a config of type `cls` from a YAML file, then `flags` (None = not given), then overrides."""
    data: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    from_file = set(_dotted_keys(data))
    given = {k: v for k, v in (flags or {}).items() if v is not None} | parse_overrides(overrides or [])
    for key, value in given.items():  # an override wins over a flag of the same key
        _set_dotted(data, key, value)
        from_file.discard(key)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        if err.key is not None and err.key.split("[")[0] in from_file:  # the file's own value: name the file
            raise ConfigError(f"{path}: {err}", err.key) from None
        raise


def _dotted_keys(data: dict[str, Any], where: str = ""):
    """{'lora': {'r': 4}, 'lr': 1} -> 'lora', 'lora.r', 'lr'."""
    for key, value in data.items():
        yield _join(where, key)
        if isinstance(value, dict):
            yield from _dotted_keys(value, _join(where, key))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # one line: where, and what the parser found there
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top, found {type(data).__name__}.")
    return data


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['train.lr=1e-3', 'out=runs/x'] -> {'train.lr': '1e-3', 'out': 'runs/x'}; values stay strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (for example: lr=1e-4).")
        out[key.strip()] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{dotted}': '{part}' holds a value, not a section of keys.")
        node = child
    node[leaf] = value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass `cls` from `data`, rejecting unknown keys and coercing values to the declared types."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or cls.__name__}' must be a section of keys, found {data!r}.", where or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        message = _unknown_key_message(unknown[0], where, list(fields), getattr(cls, "KNOWN_AS", {}))
        raise ConfigError(message, _join(where, unknown[0]))
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], _join(where, name))
    missing = [n for n, f in fields.items() if n not in kwargs and _is_required(f)]
    if missing:
        raise ConfigError(f"missing required key '{_join(where, missing[0])}' (give it in the YAML or as "
                          f"{_join(where, missing[0])}=VALUE).")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # a __post_init__ check
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None  # where: the nested key (lora)


def check_bounds(cfg, above_zero: tuple[str, ...] = (), at_least_zero: tuple[str, ...] = ()) -> None:
    """Numbers a type does not bound (None passes: not set): lr=-1 or batch_size=0 is said when the config is
    read, not met later as a torch error."""
    for name in above_zero:
        if (value := getattr(cfg, name)) is not None and value <= 0:
            raise ValueError(f"{name} must be above 0, got {value}")
    for name in at_least_zero:
        if (value := getattr(cfg, name)) is not None and value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unknown_key_message(key: str, where: str, valid: list[str], known_as: dict[str, str]) -> str:
    """`known_as`: the names other tools give a key (learning_rate -> lr), said as such."""
    if key in known_as:
        return (f"unknown key '{_join(where, key)}' (a name from other training scripts): here it is "
                f"{_join(where, known_as[key])}.")
    starts = [k for k in valid if len(k) > 1 and key.startswith(k)]  # a typo that starts with a key: lrate, lr
    close = [max(starts, key=len)] if starts else difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{_join(where, close[0])}'?" if close else ""
    return f"unknown key '{_join(where, key)}'.{hint} Valid keys{' in ' + where if where else ''}: {', '.join(valid)}."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1], key)
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"'{key}' must be one of {', '.join(map(str, args))}; got {value!r}.{hint}", key)
    if origin is list:
        items = _as_list(value, key)
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}.", key)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    return _coerce_scalar(value, tp, key)


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        if value.strip().startswith("["):
            parsed = yaml.safe_load(value)
            if isinstance(parsed, list):
                return parsed
        return [v.strip() for v in value.split(",") if v.strip()]
    raise ConfigError(f"'{key}' must be a list, got {value!r}.", key)


def _coerce_scalar(value: Any, tp: type, key: str) -> Any:
    bad = ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}.", key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad
    raise ConfigError(f"'{key}': unsupported config type {tp!r}.")


def _type_name(tp: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(
        tp, tp.__name__)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (or dict) -> plain YAML-safe dict (paths become strings)."""
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("llavatune", "torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_run_config(out_dir: Path, verb: str, cfg: Any, **extra: Any) -> Path:
    """Write `run_config.yaml`: the verb, the resolved config, package versions and any extra sections."""
    doc = {"verb": verb, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "config": to_dict(cfg), "versions": versions(), **extra}
    path = Path(out_dir) / RUN_CONFIG
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def read_run_config(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_CONFIG
    return yaml.safe_load(path.read_text()) if path.is_file() else None
