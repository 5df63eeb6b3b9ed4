"""What trains, exact resume, guards, checkpoints that merge and generate."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from conftest import train_config
from llavatune.errors import LlavatuneError
from llavatune.merge import MergeConfig
from llavatune.merge import main as merge
from llavatune.train import main as train
from llavatune.training import checkpoint


def weights(folder):
    return load_file(folder / "model.safetensors")


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_changes_only_the_projector(tiny_model_dir, shapes_data, tmp_path, capsys):
    out = train(train_config(tiny_model_dir, shapes_data, tmp_path / "run", "stage=pretrain", "steps=3",
                             f"data={shapes_data / 'captions.json'}"))
    assert "stage pretrain (the projector only), template plain" in capsys.readouterr().err  # no "method lora"
    before, after = weights(tiny_model_dir), weights(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    assert "plain" in (tmp_path / "run" / "run_config.yaml").read_text()


def test_lora_trains_only_adapters_and_projector(tiny_model_dir, shapes_data, tmp_path):
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=2", "lora.targets=all"))
    names = (run / "trainable.txt").read_text().split("\n\n", 1)[1].split()
    assert names and all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in names)
    assert not any("vision_tower" in n for n in names)  # 'all' stays inside the LLM
    saved = load_file(run / "final" / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in saved) and any("lora_A" in k for k in saved)


def test_resume_is_exact(tiny_model_dir, shapes_data, tmp_path):
    common = ["steps=6", "save_every=3", "keep_last=0", "lora.dropout=0.1", "grad_accum=2"]
    whole = tmp_path / "whole"
    train(train_config(tiny_model_dir, shapes_data, whole, *common))
    part = tmp_path / "part"
    train(train_config(tiny_model_dir, shapes_data, part, *common))
    # pretend the run died after step 3: drop what came later, then resume
    shutil.rmtree(part / "final")
    rows = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n")
    train(train_config(tiny_model_dir, shapes_data, part, *common, "resume=auto"))
    assert losses(part) == losses(whole) and len(losses(whole)) == 6
    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in (whole, part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_given_more_steps_continues_on_the_longer_schedule(tiny_model_dir, shapes_data, tmp_path,
                                                                          capsys):
    from llavatune.training.optim import build_scheduler

    def rows():
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=4", "save_every=0"))
    first = rows()
    capsys.readouterr()
    train(train_config(tiny_model_dir, shapes_data, run, "steps=8", "save_every=0", "lr=2e-3", "resume=auto"))
    said = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "final at step 4" in said and "lr 0.001 -> 0.002, steps 4 -> 8" in said
    assert "data changed" not in said
    extended = rows()
    assert [r["step"] for r in extended] == list(range(1, 9)) and extended[:4] == first
    # steps 5-8 follow the 8-step cosine of lr 2e-3, not the 4-step one of 1e-3 that had reached 0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    schedule = build_scheduler(optimizer, "cosine", round(0.03 * 8), 8)
    expected = []
    for _ in range(8):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert [r["lr"] for r in extended[4:]] == pytest.approx(expected[4:]) and expected[4] > 5e-4

    made = (run / "final" / "checkpoint.json").stat().st_mtime_ns
    train(train_config(tiny_model_dir, shapes_data, run, "steps=8", "save_every=0", "lr=2e-3", "resume=auto"))
    assert "nothing left to train of 8 steps" in " ".join(capsys.readouterr().err.split())
    assert (run / "final" / "checkpoint.json").stat().st_mtime_ns == made and len(rows()) == 8

    fewer = tmp_path / "fewer.json"  # a few rows fixed or dropped, then the run resumed: said, not silent
    fewer.write_text(json.dumps(json.loads((shapes_data / "qa.json").read_text())[:30]))
    train(train_config(tiny_model_dir, shapes_data, run, "steps=9", "save_every=0", "lr=2e-3", "resume=auto",
                       f"data={fewer}"))
    assert "the data changed since that checkpoint (40 rows then, 30 now)" in " ".join(capsys.readouterr().err.split())


def test_data_workers_give_the_same_run_and_resume(tiny_model_dir, shapes_data, tmp_path):
    """Batches made in 2 worker processes, the run cut after step 3 and resumed: the losses and adapters of
    a run that made its batches in the main process."""
    common = ["steps=6", "save_every=3", "keep_last=0", "grad_accum=2", "batch_size=3"]  # 40 rows: epochs cross
    plain = tmp_path / "plain"
    train(train_config(tiny_model_dir, shapes_data, plain, *common, "data_workers=0"))
    forked = tmp_path / "forked"
    train(train_config(tiny_model_dir, shapes_data, forked, *common, "data_workers=2"))
    shutil.rmtree(forked / "final")  # as if killed after the checkpoint of step 3
    (forked / "metrics.jsonl").write_text("".join((forked / "metrics.jsonl").open().readlines()[:3]))
    train(train_config(tiny_model_dir, shapes_data, forked, *common, "data_workers=2", "resume=auto"))
    assert losses(forked) == losses(plain) and len(losses(plain)) == 6
    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in (plain, forked))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_parquet_file_with_the_images_inside_trains_as_rows_and_folder(tiny_model_dir, shapes_data, tmp_path):
    """`data convert --out qa.parquet`: the run on the one file is the run on the JSON rows and their folder."""
    from llavatune.data.formats import read_records
    from llavatune.data.pack import write_parquet

    packed = tmp_path / "qa.parquet"
    write_parquet(packed, read_records(shapes_data / "qa.json"), shapes_data, chunk=7)
    common = ["steps=3", "save_every=0", "data_workers=0"]
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "rows", *common))
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "packed", *common, f"data={packed}", "images=null"))
    assert losses(tmp_path / "packed") == losses(tmp_path / "rows") and len(losses(tmp_path / "rows")) == 3


def test_images_in_a_zip_archive_train_as_the_folder(tiny_model_dir, shapes_data, tmp_path):
    """images=images.zip, read by two forked data workers (a handle each): the run of the image folder."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "images.zip", "w") as z:
        for file in sorted((shapes_data / "images").iterdir()):
            z.write(file, f"images/{file.name}")
    common = ["steps=3", "save_every=0"]
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "folder", *common, "data_workers=0"))
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "zip", *common, "data_workers=2",
                       f"images={tmp_path / 'images.zip'}"))
    assert losses(tmp_path / "zip") == losses(tmp_path / "folder") and len(losses(tmp_path / "folder")) == 3


def test_resume_auto_skips_a_truncated_checkpoint(tiny_model_dir, shapes_data, tmp_path):
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=4", "save_every=2", "keep_last=0"))
    newest = run / "checkpoint-4"
    shutil.copytree(run / "final", newest)
    (newest / "adapter_model.safetensors").write_bytes(b"truncated")
    assert checkpoint.latest(run) == run / "final"  # as new as checkpoint-4 would be, and complete
    (run / "final" / "trainer_state.pt").write_bytes(b"cut")
    assert checkpoint.latest(run) == run / "checkpoint-2"
    with pytest.raises(LlavatuneError, match="already holds a run"):
        train(train_config(tiny_model_dir, shapes_data, run, "steps=4"))


def test_nan_loss_is_skipped_and_weights_stay_finite(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    forward = LlavaForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        return _nan(out) if calls["n"] in (2, 3) else out

    monkeypatch.setattr(LlavaForConditionalGeneration, "forward", poisoned)
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=5", "method=full"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == 2 and "loss" not in rows[1] and "loss" not in rows[2]
    assert all(torch.isfinite(t).all() for t in weights(run / "final").values())

    calls["n"] = -100  # from now on every step is poisoned
    monkeypatch.setattr(LlavaForConditionalGeneration, "forward",
                        lambda self, *a, **k: _nan(forward(self, *a, **k)))
    stop = train_config(tiny_model_dir, shapes_data, tmp_path / "stop", "steps=5", "nan_patience=3")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(LlavatuneError, match="3 non-finite steps in a row"):
            train(stop)
    assert not [w for w in seen if "lr_scheduler" in str(w.message)], "torch's warning, when ours says why"


def _nan(out):
    out.logits = out.logits * float("nan")  # the training loss is computed from the logits
    return out


def test_middle_checkpoint_merges_and_generates(tiny_model_dir, shapes_data, tmp_path, rgb_image):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llavatune.model import load as loadlib

    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:  # PEFT's read of a deprecated flag stays quiet
        warnings.simplefilter("always")
        train(train_config(tiny_model_dir, shapes_data, run, "steps=4", "save_every=2"))
        merged = merge(MergeConfig(run=run / "checkpoint-2", out=tmp_path / "merged"))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    model = LlavaForConditionalGeneration.from_pretrained(merged).eval()
    processor = AutoProcessor.from_pretrained(merged)
    inputs = processor(images=rgb_image, text="<image>\nWhat colour is the shape?", return_tensors="pt")
    with torch.no_grad():
        merged_logits = model(**inputs).logits
        adapter_model, _ = loadlib.load(run / "checkpoint-2")
        adapter_logits = adapter_model(**inputs).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3


def test_bad_image_skips_or_stops(tiny_model_dir, shapes_data, tmp_path, capsys):
    data = tmp_path / "bad.json"
    rows = json.loads((shapes_data / "qa.json").read_text())[:8]
    rows[3]["image"] = "images/missing.png"
    rows[5]["image"] = "images/missing.png"
    data.write_text(json.dumps(rows))
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "skip", "steps=2", f"data={data}"))
    metrics = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["dropped_samples"] == 2  # one epoch of 8 rows: both bad ones were drawn
    named = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: sample dropped")]
    assert len(named) == 1 and f"{data}:" in named[0] and "missing.png' not found" in named[0]  # the first, once
    with pytest.raises(LlavatuneError, match="missing.png' not found"):
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "stop", "steps=2", f"data={data}",
                           "on_bad_image=stop"))


@pytest.mark.parametrize("workers", ["data_workers=0", "data_workers=2"])
def test_ctrl_c_saves_and_resume_continues(tiny_model_dir, shapes_data, tmp_path, monkeypatch, workers):
    from llavatune.training import loop

    real = loop._update
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_update", interrupted)
    run = tmp_path / "run"
    with pytest.raises(LlavatuneError, match="interrupted after step 2"):
        train(train_config(tiny_model_dir, shapes_data, run, "steps=4", workers))
    assert checkpoint.latest(run) == run / "checkpoint-2"
    monkeypatch.setattr(loop, "_update", real)
    train(train_config(tiny_model_dir, shapes_data, run, "steps=4", "resume=auto", workers))
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_each_epoch_is_ordered_once(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    """Ordering 665K rows by modality and length takes about a second: once per epoch, not once per step."""
    from llavatune.training import runner

    seeds = []
    real = runner.batch_order
    monkeypatch.setattr(runner, "batch_order", lambda lengths, size, seed, grouped: seeds.append(seed) or
                        real(lengths, size, seed, grouped))
    train(train_config(tiny_model_dir, shapes_data, tmp_path / "run", "epochs=2.5", "save_every=0", "seed=7"))
    assert seeds == [7, 8, 9]  # epochs 0, 1 and the half of 2


def test_qlora_on_cpu_says_what_it_needs(tiny_model_dir, shapes_data, tmp_path):
    with pytest.raises(LlavatuneError, match="needs"):
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "q", "steps=1", "method=qlora"))


def test_qlora_is_refused_where_the_weights_would_be_sharded(tiny_model_dir, shapes_data, tmp_path):
    for strategy in ("zero3", "zero3-offload"):  # a group of one process: DeepSpeed's strategies need one
        with pytest.raises(LlavatuneError, match="use strategy=ddp or zero2"):
            train(train_config(tiny_model_dir, shapes_data, tmp_path / strategy, "steps=1", "method=qlora",
                               f"strategy={strategy}"))


def test_cli_train_with_a_shipped_recipe_name(tiny_model_dir, shapes_data, tmp_path):
    from llavatune.cli import run as cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "tiny-full", f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}",
             f"images={shapes_data}", f"out={tmp_path / 'run'}", "steps=2", "save_every=0",
             "report_to=[tensorboard]"])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert exit_info.value.code in (0, None)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "loss.png").is_file()


def test_data_with_no_usable_sample_stops_with_a_reason(tiny_model_dir, shapes_data, tmp_path, capsys):
    rows = json.loads((shapes_data / "qa.json").read_text())[:6]
    broken = tmp_path / "broken"  # images that are there but do not decode: met only when drawn
    (broken / "images").mkdir(parents=True)
    (broken / "images" / "bad.png").write_bytes(b"not a png")
    data = tmp_path / "broken.json"
    data.write_text(json.dumps([{**row, "image": "images/bad.png"} for row in rows]))
    with pytest.raises(LlavatuneError, match=r"no usable training sample: (\d+) of \1 samples drawn were dropped "
                                             r"\(bad image: \1\); the first: .*broken.json:\d+"):
        train(train_config(tiny_model_dir, broken, tmp_path / "run", "steps=2", f"data={data}"))
    assert "every sample of this step was dropped; no update" in capsys.readouterr().out  # step 1, before the stop
    assert not (tmp_path / "run" / "final").exists()  # no adapter that learned nothing
    # images missing, or a folder the paths are not relative to: said before the model loads (none here)
    data = tmp_path / "gone.json"
    data.write_text(json.dumps([{**row, "image": "images/missing.png"} for row in rows]))
    with pytest.raises(LlavatuneError, match=r"images=.*: 6 of 6 images checked are not there \(the first: "
                                             r".*gone.json:1: 'images/missing.png'\)"):
        train(train_config(tmp_path / "no-model", shapes_data, tmp_path / "run1", "steps=2", f"data={data}"))
    wrong = tmp_path / "wrong_images"
    wrong.mkdir()
    with pytest.raises(LlavatuneError, match=r"images=.*wrong_images: (\d+) of \1 images checked are not there"):
        train(train_config(tmp_path / "no-model", shapes_data, tmp_path / "run3", "steps=2", f"images={wrong}"))
    with pytest.raises(LlavatuneError, match="images=.*nowhere: no such folder"):  # before the model loads
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "run2", "steps=2", f"images={tmp_path / 'nowhere'}"))
    # images= left out: said at once, before the model (none here) is looked for
    with pytest.raises(LlavatuneError, match=r"qa.json:1: the sample names image .* images=DIR names the folder"):
        train(train_config(tmp_path / "no-model", shapes_data, tmp_path / "run4", "steps=2", "images=null"))
