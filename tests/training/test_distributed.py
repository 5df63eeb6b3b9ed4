"""Data parallel on CPU: 2 processes (gloo) give the loss curve of 1 process with doubled accumulation, for
LoRA and full fine-tuning; their checkpoints have the single-process layout and resume on 1 process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llavatune import configs
from llavatune.config import load
from llavatune.train import TrainConfig
from llavatune.train import main as train


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_equal_one_with_double_accumulation(tiny_model_dir, shapes_data, tmp_path, method):
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=4", "save_every=2", "keep_last=0", "report_to=[]", "lr=1e-3", f"method={method}",
              "lora.dropout=0", "lora.targets=all"]
    exe = str(Path(sys.executable).parent / "llavatune")
    two = tmp_path / "two"
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={two}", "grad_accum=1", "--procs", "2",
                             "--master-port", "29731"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(two)) == 4
    run_config = (two / "run_config.yaml").read_text()
    assert "global_batch: 4" in run_config and "devices: 2" in run_config
    assert files(two / "checkpoint-2") == files(one / "checkpoint-2")
    # a 2-process checkpoint resumes on 1 process
    import shutil
    shutil.rmtree(two / "final")
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={two}", "grad_accum=2", "resume=auto"]))
    assert losses(two)[2:] == pytest.approx(losses(one)[2:], abs=1e-5)
