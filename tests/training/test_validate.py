"""Held-out evaluation during training: it leaves the run unchanged, its loss is the final model's loss on the
held-out rows, its answers are the final model's answers, and it resumes with the run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_config
from llavatune.data import images as imagelib
from llavatune.data.formats import Record
from llavatune.errors import LlavatuneError
from llavatune.metrics import exact_match
from llavatune.train import main as train
from llavatune.training import validate


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def held_out(shapes_data, tmp_path, n=9):
    """The first n question rows: with batch_size 4, batches of 4, 4, 1."""
    path = tmp_path / "val.json"
    path.write_text(json.dumps(json.loads((shapes_data / "qa.json").read_text())[:n]))
    return path


def test_evaluation_leaves_the_run_unchanged(tiny_model_dir, shapes_data, tmp_path):
    common = ["steps=4", "lora.dropout=0.1", "save_every=0"]
    plain = train(train_config(tiny_model_dir, shapes_data, tmp_path / "plain", *common))
    watched = train(train_config(tiny_model_dir, shapes_data, tmp_path / "watched", *common,
                                 f"eval_data={held_out(shapes_data, tmp_path)}", "eval_every=2", "eval_answers=2"))
    metrics = rows(tmp_path / "watched" / "metrics.jsonl")
    plain_losses = [r["loss"] for r in rows(tmp_path / "plain" / "metrics.jsonl")]
    assert [r["loss"] for r in metrics if "loss" in r] == plain_losses
    a, b = load_file(plain / "adapter_model.safetensors"), load_file(watched / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(r["eval_samples"] == 9 for r in evals)
    assert all(r["eval_answered"] == 2 for r in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert validate.line(evals[-1], metrics).startswith(
        f"eval at step 4: loss {evals[-1]['eval_loss']:.4f} on 9 samples (train {plain_losses[-1]:.4f}), "
        f"exact match {evals[-1]['eval_exact_match']:.3f} on 2 answered, ")
    assert validate.summary(metrics, tmp_path / "watched", final_step=4).endswith(" on 2 answered")


def test_eval_loss_and_answers_are_the_final_models(tiny_model_dir, shapes_data, tmp_path):
    """Scored again outside the run: the model's own loss per held-out sample (token-weighted), and the
    greedy answers of the saved checkpoint through the Python API."""
    import llavatune
    from llavatune.data.dataset import SupervisedDataset
    from llavatune.data.templates import get_template

    val = held_out(shapes_data, tmp_path)
    final = train(train_config(tiny_model_dir, shapes_data, tmp_path / "run", "steps=3", "save_every=0",
                               f"eval_data={val}", "eval_answers=3"))
    last = [r for r in rows(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r][-1]

    model = llavatune.load(final, device="cpu")
    dataset = SupervisedDataset(val, shapes_data, model.processor, get_template("vicuna_v1"),
                                model.model.config.image_token_id, model.model.config.image_seq_length, 2048)
    total = tokens = 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            labels = torch.tensor([item.labels])
            n = int((labels[:, 1:] != -100).sum())
            out = model.model(input_ids=torch.tensor([item.input_ids]), pixel_values=item.pixel_values, labels=labels)
            total, tokens = total + out.loss.item() * n, tokens + n
    assert last["step"] == 3 and last["eval_tokens"] == tokens
    assert last["eval_loss"] == pytest.approx(total / tokens, abs=1e-4)

    answers = [r for r in rows(tmp_path / "run" / "eval_answers.jsonl") if r["step"] == 3]
    assert len(answers) == 3
    records = json.loads(val.read_text())[:3]
    for row, record in zip(answers, records):
        image = imagelib.load(record["image"], shapes_data, "test")
        question = record["conversations"][0]["value"]
        assert row["question"] == question and row["reference"] == record["conversations"][1]["value"]
        room = len(model.processor.tokenizer(row["reference"], add_special_tokens=False)["input_ids"]) + 16
        alone = model.answers([question], [[image]], max_new_tokens=room)[0]
        assert (row["answer"], row["finish_reason"]) == (alone.text, alone.finish_reason)
        assert row["exact_match"] == exact_match(row["answer"], row["reference"])
    assert last["eval_exact_match"] == pytest.approx(sum(r["exact_match"] for r in answers) / 3, abs=1e-4)


def test_evaluation_resumes_with_the_run(tiny_model_dir, shapes_data, tmp_path):
    common = ["steps=4", "save_every=2", "keep_last=0", f"eval_data={held_out(shapes_data, tmp_path)}",
              "eval_answers=1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(train_config(tiny_model_dir, shapes_data, whole, *common))
    train(train_config(tiny_model_dir, shapes_data, part, *common))
    shutil.rmtree(part / "final")  # as if killed after the checkpoint of step 2
    train(train_config(tiny_model_dir, shapes_data, part, *common, "resume=auto"))

    def evals(run):
        return [(r["step"], r["eval_loss"]) for r in rows(run / "metrics.jsonl") if "eval_loss" in r]

    assert evals(part) == evals(whole) and [s for s, _ in evals(whole)] == [0, 2, 4]
    answers = [(r["step"], r["answer"]) for r in rows(whole / "eval_answers.jsonl")]
    assert [(r["step"], r["answer"]) for r in rows(part / "eval_answers.jsonl")] == answers and len(answers) == 3


def test_unusable_eval_data_is_named(tiny_model_dir, shapes_data, tmp_path):
    data = shutil.copytree(shapes_data, tmp_path / "data")
    (data / "broken.png").write_bytes(b"not a png")  # there: a missing image is said before the model loads
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps([{"id": "x", "image": "broken.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]}]))
    with pytest.raises(LlavatuneError, match="eval_data: none of its 1 samples is usable"):
        train(train_config(tiny_model_dir, data, tmp_path / "run", "steps=1", f"eval_data={bad}"))


def test_ctrl_c_during_evaluation_keeps_the_finished_step(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    """Interrupted while scoring step 2: the checkpoint is step 2's (its update is done), and the resumed run
    ends with the losses and adapter of an uninterrupted one."""
    from llavatune.training import validate

    common = ["steps=4", "save_every=0", "eval_every=2", f"eval_data={held_out(shapes_data, tmp_path)}"]
    whole = train(train_config(tiny_model_dir, shapes_data, tmp_path / "whole", *common))
    real = validate.Validator.__call__

    def interrupted(self, model, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, model, step)

    monkeypatch.setattr(validate.Validator, "__call__", interrupted)
    run = tmp_path / "run"
    with pytest.raises(LlavatuneError, match="interrupted after step 2"):
        train(train_config(tiny_model_dir, shapes_data, run, *common))
    monkeypatch.setattr(validate.Validator, "__call__", real)
    resumed = train(train_config(tiny_model_dir, shapes_data, run, *common, "resume=auto"))
    losses = [[r["loss"] for r in rows(r / "metrics.jsonl") if "loss" in r] for r in (tmp_path / "whole", run)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_rows_that_show_training_images_are_counted():
    def rows(*images):
        return [Record(id=str(i), turns=[], images=list(refs), source=f"val.json:{i + 1}")
                for i, refs in enumerate(images)]
    train = rows(["a.png"], ["b.png", "./c.png"], [b"\x89PNG bytes"], [])
    assert validate.shared_images(rows(["d.png"], [], [b"other bytes"]), train) is None
    warning = validate.shared_images(rows(["d.png"], ["e.png", "c.png"], [b"\x89PNG bytes"], ["x/../a.png"]), train)
    assert warning.startswith("warning: eval_data: 3 of 4 held-out rows show images that the training data has too "
                              "(the first: val.json:2, c.png)")


def test_the_lowest_eval_checkpoint_survives_pruning_and_is_named(tmp_path):
    from llavatune.training import checkpoint, validate

    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    rows = [{"step": 0, "eval_loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "eval_loss": 3.0},
            {"step": 4, "eval_loss": 4.0}, {"step": 8, "eval_loss": 3.5}]
    assert validate.lowest_step(rows) == 2
    checkpoint.prune(tmp_path, keep_last=2, keep_step=validate.lowest_step(rows))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    text = validate.summary(rows, tmp_path, final_step=8)
    assert "5.0000 (step 0) -> 3.5000 (step 8); lowest 3.0000 at step 2" in text
    assert str(tmp_path / "checkpoint-2") in text
    assert "before training" in validate.summary([{"step": 0, "eval_loss": 1.0}, {"step": 8, "eval_loss": 2.0}],
                                                 tmp_path, final_step=8)


def test_eval_options_without_eval_data_are_refused(tiny_model_dir, shapes_data, tmp_path):
    from llavatune.config import ConfigError

    with pytest.raises(ConfigError, match="give eval_data=FILE too"):
        train_config(tiny_model_dir, shapes_data, tmp_path / "run", "eval_answers=4")
    with pytest.raises(ConfigError, match="0 or more"):
        train_config(tiny_model_dir, shapes_data, tmp_path / "run", f"eval_data={shapes_data / 'qa.json'}",
                     "eval_every=-1")


def test_held_out_batches_made_in_workers_score_the_same(tiny_model_dir, shapes_data, tmp_path):
    common = ["steps=2", "save_every=0", f"eval_data={held_out(shapes_data, tmp_path)}"]

    def evals(workers):
        run = tmp_path / f"w{workers}"
        train(train_config(tiny_model_dir, shapes_data, run, *common, f"data_workers={workers}"))
        return [(r["step"], r["eval_loss"], r["eval_tokens"]) for r in rows(run / "metrics.jsonl") if "eval_loss" in r]

    in_process = evals(0)
    assert evals(2) == in_process and len(in_process) == 2
