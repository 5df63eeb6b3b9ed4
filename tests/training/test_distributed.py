"""Data parallel on CPU: 2 processes (gloo), DDP, FSDP2 or DeepSpeed ZeRO-2/3, give the loss curve of 1
process with doubled accumulation, for LoRA and full fine-tuning; their checkpoints have the single-process layout and weights
(gathered, never empty shards) and resume on 1 process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavatune import configs
from llavatune.config import load
from llavatune.train import TrainConfig
from llavatune.train import main as train


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("strategy,method", [("ddp", "lora"), ("ddp", "full"), ("fsdp", "lora"), ("fsdp", "full"),
                                             ("zero2", "lora"), ("zero3", "lora"), ("zero3", "full")])
def test_two_processes_equal_one_with_double_accumulation(tiny_model_dir, shapes_data, tmp_path, strategy, method):
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=4", "save_every=2", "keep_last=0", "report_to=[]", "lr=1e-3", f"method={method}",
              "lora.dropout=0", "lora.targets=all"]
    exe = str(Path(sys.executable).parent / "llavatune")
    two = tmp_path / "two"
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={two}", "grad_accum=1", "--procs", "2",
                             "--strategy", strategy, "--master-port", "29731"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = tmp_path / "one"
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(two)) == 4
    row = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])  # throughput total and per device
    assert len(row["mem_gib_per_device"]) == 2 and row["mem_gib"] == max(row["mem_gib_per_device"]) > 0
    assert row["samples_per_s_per_device"] == pytest.approx(row["samples_per_s"] / 2, abs=2e-3)
    run_config = (two / "run_config.yaml").read_text()
    assert "global_batch: 4" in run_config and "devices: 2" in run_config
    assert files(two / "checkpoint-2") == files(one / "checkpoint-2")
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(two / "checkpoint-2" / weights), load_file(one / "checkpoint-2" / weights)
    # AdamW divides by sqrt(v): where a gradient is near 0, summation-order rounding (all-reduce vs accumulation)
    # moves an element by up to ~1% of a step (lr 1e-3); losing or double-counting a rank's samples moves whole steps
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # a 2-process checkpoint resumes on 1 process
    import shutil
    shutil.rmtree(two / "final")
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={two}", "grad_accum=2", "resume=auto"]))
    assert losses(two)[2:] == pytest.approx(losses(one)[2:], abs=1e-5)


@pytest.mark.slow
def test_fsdp_bf16_checkpoint_keeps_the_trained_dtypes(tiny_model_dir, shapes_data, tmp_path):
    """FSDP2 stores bf16 runs' shards in fp32 (one dtype per unit); the gathered checkpoint is cast back, so a
    2-process full bf16 run saves the dtypes a 1-process one does, and trains the same way (bf16 tolerance)."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=2", "keep_last=0", "report_to=[]", "lr=1e-3", "method=full", "precision=bf16"]
    exe = str(Path(sys.executable).parent / "llavatune")
    two, one = tmp_path / "two", tmp_path / "one"
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={two}", "--procs", "2", "--strategy", "fsdp",
                             "--master-port", "29733"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    a, b = load_file(two / "final" / "model.safetensors"), load_file(one / "final" / "model.safetensors")
    assert {k: t.dtype for k, t in a.items()} == {k: t.dtype for k, t in b.items()}
    assert torch.bfloat16 in {t.dtype for t in a.values()}
    assert losses(two) == pytest.approx(losses(one), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_one_process_checkpoint_resumes_under_deepspeed(tiny_model_dir, shapes_data, tmp_path, strategy):
    """The name-keyed optimizer state goes into the ZeRO partitions: resuming a 1-process run on 2 DeepSpeed
    processes continues its loss curve."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=4", "save_every=2", "keep_last=0", "report_to=[]", "lr=1e-3", "lora.dropout=0"]
    one = tmp_path / "one"
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil
    shutil.copytree(one / "checkpoint-2", resumed / "checkpoint-2")
    exe = str(Path(sys.executable).parent / "llavatune")
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={resumed}", "grad_accum=1", "resume=auto",
                             "--procs", "2", "--strategy", strategy, "--master-port", "29735"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(resumed) == pytest.approx(losses(one)[2:], abs=1e-5)


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3-offload"])
def test_shipped_deepspeed_settings_refine_the_strategy(strategy, tmp_path):
    from llavatune.errors import LlavatuneError
    from llavatune.training.distributed import deepspeed_config

    shipped = configs.path_of(f"deepspeed/{strategy}.json")
    config = deepspeed_config(strategy, 4, 8, 1.0, shipped)
    assert config["zero_optimization"]["overlap_comm"] is True  # the GPU setting replaced the CPU-safe default
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"]) == (4, 8, 1.0)
    clash = tmp_path / "mine.json"
    clash.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(LlavatuneError, match="mine.json: 'train_micro_batch_size_per_gpu' is set by the run"):
        deepspeed_config(strategy, 4, 8, 1.0, clash)
    other = "zero2" if strategy != "zero2" else "zero3"
    with pytest.raises(LlavatuneError, match="contradicts"):
        deepspeed_config(other, 4, 8, 1.0, shipped)


@pytest.mark.slow
def test_one_process_zero3_offload_trains_like_plain(tiny_model_dir, shapes_data, tmp_path):
    """DeepSpeed in a single process (how zero3-offload fits a big model on one card) makes its own group of
    one and gives the plain run's loss curve and weights."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=3", "save_every=0", "report_to=[]", "lr=1e-3", "lora.dropout=0", "grad_accum=2"]
    exe = str(Path(sys.executable).parent / "llavatune")
    ds = tmp_path / "ds"
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={ds}", "strategy=zero3-offload"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plain = tmp_path / "plain"
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={plain}"]))
    assert losses(ds) == pytest.approx(losses(plain), abs=1e-5)
    a, b = (load_file(run / "final" / "adapter_model.safetensors") for run in (ds, plain))
    # DeepSpeed's CPU AdamW rounds differently from torch's; same bound as above
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
