"""Data parallel on CPU: 2 processes (gloo), DDP, FSDP2 or DeepSpeed ZeRO-2/3, give the loss curve of 1
process with doubled accumulation, for LoRA and full fine-tuning; their checkpoints have the single-process layout and weights
(gathered, never empty shards) and resume on 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llavatune import configs
from llavatune.config import load
from llavatune.train import TrainConfig
from llavatune.train import main as train
from llavatune.training.launch import free_port


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in rows(run) if "loss" in r]


def evals(run: Path) -> list[tuple[int, float, int]]:
    return [(r["step"], r["eval_loss"], r["eval_tokens"]) for r in rows(run) if "eval_loss" in r]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def two_and_one(common: list[str], strategy: str, tmp_path: Path) -> tuple[Path, Path]:
    """The run on 2 CPU processes, and on 1 with doubled accumulation (the same global batch): their folders."""
    exe = str(Path(sys.executable).parent / "llavatune")
    two, one = tmp_path / "two", tmp_path / "one"
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={two}", "grad_accum=1", "--procs", "2",
                             "--strategy", strategy], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Loading weights:   0%") <= 1  # rank 0's bar only
    assert "is deprecated" not in result.stderr  # DeepSpeed's old collective names, once per rank and step
    assert "built successfully" not in result.stdout  # no C++ op compiled for a CPU run (~40 s)
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    return two, one


@pytest.mark.slow
@pytest.mark.parametrize("strategy,method", [("ddp", "lora"), ("ddp", "full"), ("fsdp", "lora"), ("fsdp", "full"),
                                             ("zero2", "lora"), ("zero3", "lora"), ("zero3", "full")])
def test_two_processes_equal_one_with_double_accumulation(tiny_model_dir, shapes_data, tmp_path, strategy, method):
    """Held-out evaluation too: 5 batches of 2 rows over 2 ranks (a sharded rank short of one runs a spare),
    and one greedy answer (all ranks generate together when the weights are sharded)."""
    held_out = tmp_path / "val.json"
    held_out.write_text(json.dumps(json.loads((shapes_data / "qa.json").read_text())[:9]))
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=4", "save_every=2", "keep_last=0", "report_to=[]", "lr=1e-3", f"method={method}",
              "lora.dropout=0", "lora.targets=all", f"eval_data={held_out}", "eval_answers=1"]
    two, one = two_and_one(common, strategy, tmp_path)
    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(two)) == 4
    assert [(s, n) for s, _, n in evals(two)] == [(s, n) for s, _, n in evals(one)] and len(evals(one)) == 3
    assert [loss for _, loss, _ in evals(two)] == pytest.approx([loss for _, loss, _ in evals(one)], abs=1e-5)
    answers = (two / "eval_answers.jsonl").read_text().splitlines()
    assert len(answers) == 3 and answers == (one / "eval_answers.jsonl").read_text().splitlines()
    row = [r for r in rows(two) if "loss" in r][-1]  # throughput total and per device
    assert len(row["mem_gib_per_device"]) == 2 and row["mem_gib"] == max(row["mem_gib_per_device"]) > 0
    assert row["samples_per_s_per_device"] == pytest.approx(row["samples_per_s"] / 2, abs=2e-3)
    run_config = (two / "run_config.yaml").read_text()
    assert "global_batch: 4" in run_config and "devices: 2" in run_config
    assert files(two / "checkpoint-2") == files(one / "checkpoint-2")
    # the same counts, though ZeRO-3 leaves each parameter empty outside its forward
    assert (two / "trainable.txt").read_text() == (one / "trainable.txt").read_text()
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
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_bf16_checkpoint_keeps_the_trained_dtypes(tiny_model_dir, shapes_data, tmp_path, method):
    """FSDP2 stores what a bf16 run trains in fp32 and its frozen weights in bf16 (one unit holds both); the
    gathered checkpoint is cast back, so a 2-process bf16 run saves the dtypes a 1-process one does, and trains
    the same way (bf16 tolerance)."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=2", "keep_last=0", "report_to=[]", "lr=1e-3", f"method={method}", "precision=bf16"]
    two, one = two_and_one(common, "fsdp", tmp_path)
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(two / "final" / weights), load_file(one / "final" / weights)
    assert {k: t.dtype for k, t in a.items()} == {k: t.dtype for k, t in b.items()}
    assert {t.dtype for t in a.values()} == ({torch.bfloat16} if method == "full" else {torch.float32})
    assert losses(two) == pytest.approx(losses(one), rel=0.05)


WIDE_RUN = ["batch_size=2", "steps=2", "keep_last=0", "report_to=[]", "lr=1e-4", "method=full"]


@pytest.fixture(scope="module")
def wide_model_and_one_run(tmp_path_factory, shapes_data):
    """A tiny Qwen2 LLaVA with a 300 MB MLP (tied embeddings), and its full fine-tuning on 1 process with
    doubled accumulation: the reference both sharded strategies are held to."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from llavatune.build import BuildConfig
    from llavatune.build import main as build

    tmp = tmp_path_factory.mktemp("wide")
    small = build(BuildConfig(out=tmp / "small", preset="tiny-qwen"))
    config = AutoConfig.from_pretrained(small)
    config.text_config.intermediate_size = 3 * 2**16  # 2 layers x 150 MB of MLP
    torch.manual_seed(0)
    model_dir = tmp / "wide"
    LlavaForConditionalGeneration(config).save_pretrained(model_dir)
    AutoProcessor.from_pretrained(small).save_pretrained(model_dir)
    common = [f"model={model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", *WIDE_RUN]
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={tmp / 'one'}", "grad_accum=2"]))
    return model_dir, tmp / "one"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_sharded_runs_read_the_weights_on_rank_0_only(tmp_path, shapes_data, wide_model_and_one_run, strategy):
    """Rank 1 builds the model on the meta device and gets its shards from rank 0: once the model is placed, its
    peak memory lacks the whole CPU copy that rank 0 read. Full fine-tuning from the broadcast weights trains as
    one process does; embeddings stay tied."""
    model_dir, one = wide_model_and_one_run
    size_gib = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30
    probe = tmp_path / "probe.py"  # each rank's peak RSS once the model is placed, before training state is made
    probe.write_text(textwrap.dedent("""
        import os, resource, sys
        from pathlib import Path
        import deepspeed
        from llavatune.training import runner
        def measured(fn, when):
            def call(*args, **kwargs):
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                Path(sys.argv[1]).joinpath(f"{when}-{os.environ['RANK']}").write_text(str(peak))
                return fn(*args, **kwargs)
            return call
        runner.build_optimizer = measured(runner.build_optimizer, "fsdp")  # after FSDP placed the weights
        deepspeed.initialize = measured(deepspeed.initialize, "zero3")   # after zero.Init placed them
        from llavatune.cli import run
        run(sys.argv[2:])
    """))
    common = [f"model={model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", *WIDE_RUN]
    two = tmp_path / "two"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             str(probe), str(tmp_path), "train", "tiny-lora", *common, f"out={two}", f"strategy={strategy}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    a, b = load_file(two / "final" / "model.safetensors"), load_file(one / "final" / "model.safetensors")
    assert a.keys() == b.keys() and "lm_head.weight" not in a  # tied: saved once, as the embeddings
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # trained as one tensor, as 1 process does
    rank0, rank1 = (float((tmp_path / f"{strategy}-{r}").read_text()) for r in (0, 1))
    assert rank0 - rank1 > 0.6 * size_gib, (rank0, rank1, size_gib)


@pytest.mark.slow
def test_two_machines(tiny_model_dir, shapes_data, tmp_path):
    """`--nodes 2 --node-rank R --master-addr A` on two "machines" of one CPU process each (here both on this one,
    sharing its disk): the second machine's process is rank 1, which receives its FSDP shards from rank 0; the
    run trains as one process with doubled accumulation does."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=2", "keep_last=0", "report_to=[]", "lr=1e-3", "lora.dropout=0"]
    exe = str(Path(sys.executable).parent / "llavatune")
    two, one, port = tmp_path / "two", tmp_path / "one", str(free_port())
    machines = [subprocess.Popen([exe, "train", "tiny-lora", *common, f"out={two}", "--procs", "1", "--nodes", "2",
                                  "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", port,
                                  "--strategy", "fsdp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for r in (0, 1)]
    for machine in machines:
        _, err = machine.communicate(timeout=600)
        assert machine.returncode == 0, err[-3000:]
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={one}", "grad_accum=2"]))
    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(two)) == 2
    assert "devices: 2" in (two / "run_config.yaml").read_text()
    assert files(two / "final") == files(one / "final")


@pytest.mark.slow
def test_a_process_that_fails_ends_the_run_at_once(tiny_model_dir, shapes_data, tmp_path):
    """Rank 0 fails in its third forward (a full disk, injected). It used to hang at exit (the DDP reducer's gloo
    group joined a thread waiting for the GIL), and rank 1 with it in its next all-reduce: 30 minutes until
    gloo's timeout. Now it leaves at once, the launcher ends rank 1, and each process says one line."""
    from llavatune.training import launch

    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from transformers import LlavaForConditionalGeneration
        forward, calls = LlavaForConditionalGeneration.forward, [0]
        def failing(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 3 and os.environ["RANK"] == "0":
                raise OSError(28, "No space left on device")
            return forward(self, *args, **kwargs)
        LlavaForConditionalGeneration.forward = failing
        from llavatune.cli import run
        run(sys.argv[1:])
    """))
    argv = ["train", "tiny-lora", f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}",
            f"images={shapes_data}", "batch_size=2", "steps=6", "save_every=0", "report_to=[]", f"out={tmp_path / 'r'}"]
    command = launch.command(argv, procs=2)
    at = command.index("-m", 2)  # torchrun runs the script instead of `-m llavatune.cli`
    command[at:at + 2] = [str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and errors[0] == ("error: process 0: OSError: [Errno 28] No space left on device "
                                                    "(rerun with --debug for the traceback)"), result.stderr[-3000:]
    assert errors[-1] == "error: process 0 of the run stopped (exit code 1); its message is above."
    assert len(errors) <= 3  # rank 1 may say that it lost rank 0 before the launcher ends it


@pytest.mark.slow
def test_vision_cache_under_zero3(tiny_model_dir, shapes_data, tmp_path):
    """The ranks share out the feature cache with the tower before ZeRO-3 partitions the weights, so under
    vision_cache every rank reads them; 2 processes train as 1 does with the same cache."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=3", "keep_last=0", "report_to=[]", "lr=1e-3", "lora.dropout=0", "vision_cache=true"]
    two, one = two_and_one(common, "zero3", tmp_path)
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    assert len(list((two / "vision_cache").glob("*.safetensors"))) == len(list((one / "vision_cache").glob("*.safetensors")))


@pytest.mark.slow
def test_a_micro_batch_dropped_on_one_rank_is_passed_over_by_every_rank(tiny_model_dir, shapes_data, tmp_path):
    """One missing image at batch_size 1: that rank has no micro-batch where the other has one. Run as they were,
    their collectives would pair up wrongly (gloo aborted the run); passed over by both, DDP trains on, and ZeRO
    steps at the same micro-batch as DDP although the window is one short of its accumulation count."""
    rows_ = json.loads((shapes_data / "qa.json").read_text())[:8]
    rows_[3]["image"] = "images/missing.png"
    data = tmp_path / "one_bad.json"
    data.write_text(json.dumps(rows_))
    common = [f"model={tiny_model_dir}", f"data={data}", f"images={shapes_data}", "batch_size=1", "grad_accum=2",
              "steps=4", "save_every=0", "report_to=[]", "lr=1e-3", "lora.dropout=0"]
    exe = str(Path(sys.executable).parent / "llavatune")
    runs = {}
    for strategy in ("ddp", "zero2"):
        runs[strategy] = tmp_path / strategy
        result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={runs[strategy]}", "--procs", "2",
                                 "--strategy", strategy],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "passed over with another rank's dropped micro-batch" in " ".join(result.stderr.split())
    assert len(losses(runs["ddp"])) == 4
    assert losses(runs["zero2"]) == pytest.approx(losses(runs["ddp"]), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
def test_one_process_checkpoint_resumes_on_two(tiny_model_dir, shapes_data, tmp_path, strategy):
    """The name-keyed optimizer state goes into the shards and ZeRO partitions, and the adapter read by rank 0
    reaches the ranks that built the model empty: resuming a 1-process run on 2 processes continues its loss
    curve. (DDP keeps whole copies: its resume on another count is the 2 -> 1 case of the test above.)"""
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
                             "--procs", "2", "--strategy", strategy],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(resumed) == pytest.approx(losses(one)[2:], abs=1e-5)


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3-offload"])
def test_shipped_deepspeed_settings_refine_the_strategy(strategy, tmp_path):
    from llavatune.errors import LlavatuneError
    from llavatune.training.distributed import deepspeed_config

    shipped = configs.path_of(f"deepspeed/{strategy}.json")
    config = deepspeed_config(strategy, 4, 8, 1.0, settings=shipped)
    assert config["zero_optimization"]["overlap_comm"] is True  # the GPU setting replaced the CPU-safe default
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"]) == (4, 8, 1.0)
    clash = tmp_path / "mine.json"
    clash.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    with pytest.raises(LlavatuneError, match="mine.json: 'train_micro_batch_size_per_gpu' is set by the run"):
        deepspeed_config(strategy, 4, 8, 1.0, settings=clash)
    other = "zero2" if strategy != "zero2" else "zero3"
    with pytest.raises(LlavatuneError, match="contradicts"):
        deepspeed_config(other, 4, 8, 1.0, settings=shipped)


@pytest.mark.slow
def test_one_process_zero3_offload_trains_like_plain(tiny_model_dir, shapes_data, tmp_path):
    """DeepSpeed in a single process (how zero3-offload fits a big model on one card) makes its own group of
    one and gives the plain run's loss curve and weights."""
    common = [f"model={tiny_model_dir}", f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2",
              "steps=3", "save_every=0", "report_to=[]", "lr=1e-3", "lora.dropout=0", "grad_accum=2"]
    exe = str(Path(sys.executable).parent / "llavatune")
    ds = tmp_path / "ds"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([exe, "train", "tiny-lora", *common, f"out={ds}", "strategy=zero3-offload"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unable to detect it" not in result.stdout + result.stderr  # DeepSpeed told device=cpu, not guessing
    assert "OMP_NUM_THREADS/MKL_NUM_THREADS unset" not in result.stderr  # accelerate's warning for a CPU group
    plain = tmp_path / "plain"
    train(load(TrainConfig, configs.path_of("tiny-lora"), [*common, f"out={plain}"]))
    assert losses(ds) == pytest.approx(losses(plain), abs=1e-5)
    a, b = (load_file(run / "final" / "adapter_model.safetensors") for run in (ds, plain))
    # DeepSpeed's CPU AdamW rounds differently from torch's; same bound as above
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_nonfinite_loss_under_deepspeed_stops_before_the_step(tiny_model_dir, shapes_data, tmp_path):
    """DeepSpeed cannot drop accumulated gradients, so a NaN loss stops the run (with what to do) before its
    step; the checkpoints written before it are whole and finite. The NaN is injected in a subprocess."""
    poison = textwrap.dedent("""
        import sys
        from transformers import LlavaForConditionalGeneration
        forward, calls = LlavaForConditionalGeneration.forward, [0]
        def poisoned(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == 3:  # step 3 of a run with one micro-batch per step
                out.logits = out.logits * float("nan")
            return out
        LlavaForConditionalGeneration.forward = poisoned
        from llavatune.cli import run
        run(sys.argv[1:])
    """)
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", poison, "train", "tiny-lora", f"model={tiny_model_dir}",
                             f"data={shapes_data / 'qa.json'}", f"images={shapes_data}", "batch_size=2", "steps=4",
                             "save_every=1", "keep_last=0", "report_to=[]", f"out={run}", "strategy=zero2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "non-finite loss under DeepSpeed" in result.stderr, result.stderr[-2000:]
    from llavatune.training import checkpoint
    assert checkpoint.latest(run) == run / "checkpoint-2" and not (run / "checkpoint-3").exists()
    weights = load_file(run / "checkpoint-2" / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())


def test_a_failed_in_process_run_leaves_no_process_group(tiny_model_dir, shapes_data, tmp_path):
    """ZeRO on one device makes a one-process group and sets launcher variables; a run that fails after that
    (here: checkpoint_layers=auto refused on a CPU) tears both down, so the caller's process is as it was."""
    import os

    from conftest import train_config
    from llavatune.errors import LlavatuneError

    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    with pytest.raises(LlavatuneError, match="one CUDA GPU"):
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "r", "steps=1", "strategy=zero2",
                           "gradient_checkpointing=true", "checkpoint_layers=auto"))
    assert not torch.distributed.is_initialized()
    assert {k: os.environ.get(k) for k in before} == before


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_keeps_the_run_autocast_and_sizes_its_bucket(tiny_model_dir, shapes_data, tmp_path, monkeypatch,
                                                               strategy):
    """DeepSpeed's engine turns off an autocast begun outside it unless its config owns one (torch_autocast), and
    on a GPU it sees ours: `torch.is_autocast_enabled()` asks about CUDA. A bf16 run then fed bf16 activations
    into fp32 adapters and failed at step 1 on an H200 (2026-12-04). On CPU the same question is made to ask
    about the CPU, where the run's autocast is, so the engine meets it here as it does on a GPU. The engine's
    gradient bucket holds what trains and no more (DeepSpeed's default is 500M values, 1.86 GiB of GPU memory)."""
    import deepspeed

    from conftest import train_config
    from llavatune.training.distributed import REDUCE_BUCKET

    asks = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: asks(device_type or "cpu"))
    made, initialize = [], deepspeed.initialize
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: made.append(initialize(**kw)) or made[-1])
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=2", "save_every=0", f"strategy={strategy}",
                       "precision=bf16"))
    assert len(losses(run)) == 2 and torch.isfinite(torch.tensor(losses(run))).all()
    engine, optimizer = made[0][:2]
    assert engine.torch_autocast_enabled() and engine.torch_autocast_dtype() == torch.bfloat16
    # ZeRO-3 partitions each weight and keeps its whole size as ds_numel
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    assert optimizer.reduce_bucket_size == trained < REDUCE_BUCKET
