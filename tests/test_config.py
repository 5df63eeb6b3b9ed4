"""Typed configs: YAML + flags + key=value overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import pytest
import yaml

from llavatune.config import load, read_run_config, save_run_config
from llavatune.errors import ConfigError


@dataclasses.dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])


@dataclasses.dataclass
class Run:
    out: Path
    steps: int = 10
    bf16: bool = False
    method: Literal["lora", "full"] = "lora"
    name: str | None = None
    optim: Optim = dataclasses.field(default_factory=Optim)


def test_yaml_then_flags_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"out": "a", "steps": 5, "optim": {"lr": 0.1}}))
    cfg = load(Run, recipe, ["optim.lr=1e-3", "bf16=true", "optim.betas=0.8,0.9"], {"steps": 7, "name": None})
    assert cfg == Run(out=Path("a"), steps=7, bf16=True, optim=Optim(lr=1e-3, betas=[0.8, 0.9]))


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'. Did you mean 'optim.lr'\? Valid keys in optim: lr, betas"):
        load(Run, None, ["out=x", "optim.lrr=1"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"'steps' must be an integer, got 'ten'"):
        load(Run, None, ["out=x", "steps=ten"])
    with pytest.raises(ConfigError, match=r"'method' must be one of lora, full; got 'loar'. Did you mean 'lora'"):
        load(Run, None, ["out=x", "method=loar"])


def test_numbers_out_of_range_are_said_when_read():
    """A type does not bound a number: lr=-1 reached torch's optimizer, batch_size=0 a range() deep in the data
    order, warmup_ratio=1.5 and steps=0 trained without a word."""
    from llavatune.chat import ChatConfig
    from llavatune.train import TrainConfig

    common = ["model=m", "data=d.json", "out=o"]
    for override, said in [("lr=-1", "lr must be above 0, got -1.0"), ("batch_size=0", "batch_size must be above 0"),
                           ("steps=0", "steps must be above 0"), ("save_every=-1", "save_every must be 0 or more"),
                           ("warmup_ratio=1.5", "warmup_ratio is a share of the steps, from 0 to 1, got 1.5"),
                           ("lora.r=0", "lora: r must be above 0"),
                           ("lora.dropout=1", "lora: dropout is a probability")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(said)}"):
            load(TrainConfig, None, [*common, override])
    assert load(TrainConfig, None, [*common, "steps=null", "save_every=0", "warmup_ratio=0"]).steps is None
    for override, said in [("max_new_tokens=0", "max_new_tokens must be above 0"), ("top_p=1.5", "top_p is a share"),
                           ("temperature=-1", "temperature must be 0 or more")]:
        with pytest.raises(ConfigError, match=f"^{said}"):
            load(ChatConfig, None, ["model=m", override])


def test_missing_required_and_bad_override():
    with pytest.raises(ConfigError, match="missing required key 'out'"):
        load(Run, None, [])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load(Run, None, ["out"])


def test_optional_takes_null(tmp_path):
    assert load(Run, None, ["out=x", "name=none"]).name is None
    assert load(Run, None, ["out=x", "name=exp1"]).name == "exp1"


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\n  steps: 3\n")  # indented by mistake
    with pytest.raises(ConfigError, match=r"bad.yaml:2:8: not valid YAML \(mapping values are not allowed here\)\.$"):
        load(Run, bad)


def test_a_bad_key_in_the_file_names_the_file_and_known_names_are_translated(tmp_path):
    """What came from the recipe file is said with its name; what an override set is not blamed on the file. Keys
    spelled as in HF's TrainingArguments or LLaVA's train.py are said with their names here."""
    from llavatune.train import TrainConfig

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: m\ndata: d.json\nout: o\nlrate: 1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: unknown key 'lrate'. Did you mean 'lr'\?"):
        load(TrainConfig, recipe)
    with pytest.raises(ConfigError, match=r"^unknown key 'lrate'"):  # the override's own, which replaced the file's
        load(TrainConfig, recipe, ["lrate=2"])
    recipe.write_text("model: m\ndata: d.json\nout: o\nlora: {r: four}\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: 'lora.r' must be an integer, got 'four'"):
        load(TrainConfig, recipe)
    assert load(TrainConfig, recipe, ["lora.r=4"]).lora.r == 4
    for key, said in [("learning_rate", "here it is lr."), ("bf16", "here it is precision: bf16."),
                      ("lora.rank", "here it is lora.r."), ("per_device_train_batch_size", "here it is batch_size.")]:
        with pytest.raises(ConfigError, match=f"unknown key '{key}' \\(a name from other training scripts\\): {said}"):
            load(TrainConfig, None, ["model=m", "data=d.json", "out=o", f"{key}=1"])


def test_run_config_round_trip(tmp_path):
    cfg = load(Run, None, ["out=x", "steps=3"])
    save_run_config(tmp_path, "train", cfg, data={"rows": 4})
    run = read_run_config(tmp_path)
    assert run["verb"] == "train" and run["config"]["steps"] == 3 and run["config"]["out"] == "x"
    assert run["data"] == {"rows": 4}
    assert {"python", "torch", "transformers", "llavatune"} <= set(run["versions"])
    # the saved config loads back into the same typed config
    assert load(Run, None, [f"{k}={v}" for k, v in run["config"].items() if not isinstance(v, dict)]).steps == 3
