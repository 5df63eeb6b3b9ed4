"""Training that actually learns a real image set nobody tuned for (scikit-learn's bundled handwritten digits),
scored on held-out samples. The two-stage recipe on synthetic shapes is the demo's (tests/test_demo.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llavatune import configs
from llavatune.config import load
from llavatune.data import tools
from llavatune.data.synth import NUMBERS
from llavatune.evaluate import EvalConfig
from llavatune.evaluate import main as evaluate
from llavatune.train import TrainConfig
from llavatune.train import main as train

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def recipe(name, *overrides):
    return load(TrainConfig, configs.path_of(name), [*overrides, "save_every=0"])


def split(data, tmp_path, val=0.2):
    train_rows, val_rows = tools.split(data, val, seed=0)
    tools.write_rows(tmp_path / "train.json", train_rows)
    tools.write_rows(tmp_path / "val.json", val_rows)
    return tmp_path / "train.json", tmp_path / "val.json"


@pytest.mark.slow
def test_real_digits_are_learned_far_above_chance(tiny_model_dir, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    (tmp_path / "digits").mkdir()
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        grey = (pixels * 255 / 16).astype(np.uint8)
        Image.fromarray(grey).resize((32, 32), Image.NEAREST).convert("RGB").save(tmp_path / "digits" / f"{i}.png")
        rows.append({"id": str(i), "image": f"digits/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhich digit is this? Answer with one word."},
            {"from": "gpt", "value": DIGITS[label]}]})
    (tmp_path / "digits.json").write_text(json.dumps(rows))
    train_json, val_json = split(tmp_path / "digits.json", tmp_path)
    tuned = train(recipe("tiny-lora", f"model={tiny_model_dir}", f"data={train_json}", f"images={tmp_path}",
                         f"out={tmp_path / 'run'}", "steps=400"))
    result = evaluate(EvalConfig(model=tuned, data=val_json, images=tmp_path, out=tmp_path / "eval",
                                 batch_size=32, max_new_tokens=6))
    accuracy = result["models"]["model"]["exact_match"]
    assert accuracy >= 0.5, f"held-out accuracy {accuracy:.2f} (chance 0.10)"
    assert NUMBERS[1] == DIGITS[1]
