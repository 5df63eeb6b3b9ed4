"""vision_cache: features computed once equal the tower's inside LLaVA's forward, training from them gives the
losses of training from images (stage 1 and LoRA stage 2), the cache is reused, and a cache of another tower is
refused."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import train_config
from llavatune.data import features
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib
from llavatune.train import main as train


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_embedded_features_give_the_models_own_inputs(tiny_model_dir, rgb_image):
    """embed(image_features) builds the inputs_embeds LLaVA builds from pixels: same logits."""
    model, processor = loadlib.load_base(tiny_model_dir)
    model.eval()
    n = model.config.image_seq_length
    ids = torch.tensor([[1, *[model.config.image_token_id] * n, 5, 6, 7]])
    pixels = processor.image_processor([rgb_image], return_tensors="pt")["pixel_values"]
    reference = model(input_ids=ids, pixel_values=pixels).logits
    cached = features.encode(model, pixels, None)                     # (1, n, vision hidden)
    assert cached.shape == (1, n, model.config.vision_config.hidden_size)
    ours = model(**features.embed(model, {"input_ids": ids, "image_features": cached})).logits
    assert torch.allclose(reference, ours, atol=1e-5)


@pytest.mark.parametrize("recipe", ["stage=pretrain", "method=lora"])
def test_training_from_the_cache_equals_training_from_images(tiny_model_dir, shapes_data, tmp_path, recipe,
                                                            monkeypatch):
    common = ["steps=3", "lora.dropout=0", recipe]
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "images", *common))
    cached = tmp_path / "cached"
    embedded = []
    embed = features.embed
    monkeypatch.setattr(features, "embed", lambda model, batch: embedded.append(1) or embed(model, batch))
    train(train_config(tiny_model_dir, shapes_data, cached, *common, "vision_cache=true"))
    assert len(embedded) == 3  # every micro-batch came from the cache
    assert losses(cached) == pytest.approx(losses(tmp_path / "images"), abs=1e-5)
    files = sorted((cached / "vision_cache").glob("*.safetensors"))
    n_images = len({row["image"] for row in json.loads((shapes_data / "qa.json").read_text())})
    assert len(files) == n_images
    # a resumed run reuses the files (nothing recomputed)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    train(train_config(tiny_model_dir, shapes_data, cached, "steps=4", "lora.dropout=0", recipe, "vision_cache=true",
                       "resume=auto"))
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_held_out_rows_are_scored_from_the_cache_too(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    """The held-out images join the cache, so evaluations read features too, with the scores images give."""
    rows = json.loads((shapes_data / "qa.json").read_text())
    held_out = [r for r in rows if r["image"] not in {t["image"] for t in rows[:20]}][:6]
    (tmp_path / "train.json").write_text(json.dumps(rows[:20]))
    (tmp_path / "val.json").write_text(json.dumps(held_out))
    common = ["steps=2", "lora.dropout=0", f"data={tmp_path / 'train.json'}", f"eval_data={tmp_path / 'val.json'}",
              "eval_answers=2", "eval_every=1"]

    def evals(out):
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["eval_loss"] for r in lines if "eval_loss" in r]

    train(train_config(tiny_model_dir, shapes_data, tmp_path / "images", *common))
    embedded = []
    embed = features.embed
    monkeypatch.setattr(features, "embed", lambda model, batch: embedded.append(1) or embed(model, batch))
    cached = tmp_path / "cached"
    train(train_config(tiny_model_dir, shapes_data, cached, *common, "vision_cache=true"))
    assert len(embedded) == 2 + 3 * 2  # 2 training steps; 3 evaluations (steps 0, 1, 2) of 6 rows in batches of 4
    assert evals(cached) == pytest.approx(evals(tmp_path / "images"), abs=1e-5) and len(evals(cached)) == 3
    assert (cached / "eval_answers.jsonl").read_text() == (tmp_path / "images" / "eval_answers.jsonl").read_text()
    n_images = len({r["image"] for r in rows[:20] + held_out})
    assert len(list((cached / "vision_cache").glob("*.safetensors"))) == n_images


def test_a_cache_of_another_tower_is_refused(tiny_model_dir, shapes_data, tmp_path):
    model, processor = loadlib.load_base(tiny_model_dir)
    folder = tmp_path / "cache"
    features.check(model, processor, folder)
    with torch.no_grad():
        next(model.model.vision_tower.parameters()).add_(1.0)
    with pytest.raises(LlavatuneError, match="another tower"):
        features.check(model, processor, folder)


def test_vision_cache_needs_a_frozen_tower(tiny_model_dir, shapes_data, tmp_path):
    with pytest.raises(LlavatuneError, match="frozen vision tower"):
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "r", "steps=1", "method=full",
                           "train_vision=true", "vision_cache=true"))


def test_worker_processes_make_the_same_cache(tiny_model_dir, shapes_data, tmp_path):
    """Images decoded in 2 worker processes (the training run's data_workers): the same files, byte for byte;
    a missing image is left out either way."""
    from safetensors.torch import load_file

    from llavatune.data.dataset import SupervisedDataset
    from llavatune.data.templates import get_template

    rows = json.loads((shapes_data / "qa.json").read_text())[:9]
    rows[4]["image"] = "images/missing.png"
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    model, processor = loadlib.load_base(tiny_model_dir)
    data = SupervisedDataset(tmp_path / "qa.json", shapes_data, processor, get_template("vicuna_v1"),
                             model.config.image_token_id, model.config.image_seq_length, 2048)
    made = {}
    for workers in (0, 2):
        folder = tmp_path / f"cache{workers}"
        folder.mkdir()
        features.prepare(model, processor, data, folder, torch.device("cpu"), None, batch_size=4, workers=workers)
        made[workers] = {f.name: load_file(f)["features"] for f in sorted(folder.glob("*.safetensors"))}
    assert len(made[0]) == len({row["image"] for row in rows}) - 1
    assert made[0].keys() == made[2].keys() and all(torch.equal(made[0][k], made[2][k]) for k in made[0])
