"""Training that actually learns: the two-stage recipe on synthetic shapes, and a real image set nobody tuned
for (scikit-learn's bundled handwritten digits), both scored on held-out samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llavatune import configs
from llavatune.config import load
from llavatune.data import tools
from llavatune.data.synth import NUMBERS, SynthConfig
from llavatune.data.synth import main as synth
from llavatune.evaluate import EvalConfig
from llavatune.evaluate import main as evaluate
from llavatune.metrics import exact_match
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
def test_two_stages_learn_the_synthetic_task(tiny_model_dir, tmp_path):
    data = synth(SynthConfig(out=tmp_path / "shapes", n=300, tasks=["colour", "shape"]))
    train_json, val_json = split(data / "qa.json", tmp_path)
    stage1 = train(recipe("tiny-pretrain", f"model={tiny_model_dir}", f"data={data / 'captions.json'}",
                          f"images={data}", f"out={tmp_path / 's1'}", "steps=100"))
    stage2 = train(recipe("tiny-lora", f"model={stage1}", f"data={train_json}", f"images={data}",
                          f"out={tmp_path / 's2'}", "steps=300", f"eval_data={val_json}", "eval_answers=20"))
    result = evaluate(EvalConfig(model=tiny_model_dir, compare=stage2, data=val_json, images=data,
                                 out=tmp_path / "eval", batch_size=16, max_new_tokens=6))
    before, after = (result["models"][k]["exact_match"] for k in ("base", "finetuned"))
    assert before <= 0.1 and after >= 0.7, result
    # the held-out evaluation during training saw the same: its loss fell, and on its first 20 questions the
    # tuned model's answers score as `eval` scores the saved model's
    metrics = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 300] and evals[-1]["eval_loss"] < evals[0]["eval_loss"] / 2
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    in_eval = sum(exact_match(p["finetuned"], p["reference"]) for p in predictions[:20]) / 20
    assert evals[-1]["eval_exact_match"] == pytest.approx(in_eval) and evals[0]["eval_exact_match"] <= 0.1


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
