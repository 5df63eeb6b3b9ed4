"""Shipped recipes: listed, shown, copied, and every one plans on a CPU without weights."""

from __future__ import annotations

import json

import pytest

from llavatune import configs
from llavatune.cli import run

REQUIRED = {"tiny-pretrain", "tiny-lora", "tiny-qlora", "tiny-full", "llava15-7b-lora-textvqa1k",
            "qwen15-4b-clip336-lora", "defect-okng-lora", "llava15-pretrain", "llava15-finetune-lora",
            "llava15-finetune-full", "internlm2-1.8b-qlora-pretrain", "internlm2-1.8b-qlora-finetune"}


def test_required_recipes_ship():
    assert REQUIRED <= set(configs.names())


@pytest.mark.parametrize("name", sorted(n for n in configs.names() if not n.endswith(".json")))
def test_every_recipe_dry_runs(name, tmp_path, monkeypatch):
    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    plan = main(load(TrainConfig, configs.path_of(name), ["dry_run=true"]))
    assert plan["steps"] or plan["data_rows"] is None  # epoch recipes count steps once their data is there
    assert plan["memory_gib"]["total"] > 0
    trained = {comp for comp, v in plan["parameters"].items() if v["trainable"]}
    assert trained == {"projector"} if plan["stage"] == "pretrain" else trained > {"projector"}
    assert ("the projector only" in plan["trains"]) == (plan["stage"] == "pretrain")


def test_scenario2_recipe_is_exactly_the_spec():
    from llavatune.config import load
    from llavatune.train import TrainConfig

    cfg = load(TrainConfig, configs.path_of("qwen15-4b-clip336-lora"))
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets) == (4, 8, 0.05, ["q_proj", "v_proj"])
    assert (cfg.lr, cfg.steps, cfg.batch_size, cfg.max_grad_norm, cfg.save_every) == (1e-3, 800, 6, 0.3, 200)
    assert cfg.precision == "bf16" and cfg.gradient_checkpointing and cfg.schedule == "cosine"
    assert cfg.warmup_ratio > 0 and not cfg.train_vision and cfg.method == "lora"


def test_qwen_plan_counts(tmp_path, monkeypatch):
    """LoRA r4 on q/v of Qwen1.5-4B: 40 layers x (q 2560x2560 + v 2560x2560) x r4 x 2 = 1,638,400."""
    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    plan = main(load(TrainConfig, configs.path_of("qwen15-4b-clip336-lora"), ["dry_run=true"]))
    assert plan["parameters"]["adapters"]["trainable"] == 40 * 2 * 4 * (2560 + 2560)
    assert plan["parameters"]["vision"]["trainable"] == 0


def test_list_show_copy(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["configs", "list"])
    assert "qwen15-4b-clip336-lora" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["configs", "show", "tiny-lora"])
    assert "method: lora" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(["configs", "copy", "tiny-lora", str(tmp_path / "mine.yaml")])
    assert (tmp_path / "mine.yaml").read_text() == configs.path_of("tiny-lora").read_text()
    with pytest.raises(SystemExit) as exit_info:
        run(["configs", "show", "tiny-lorra"])
    assert exit_info.value.code == 2
    assert "Did you mean 'tiny-lora'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(configs.names()))
def test_every_summary_is_a_whole_sentence_on_one_line(name):
    """`configs list` shows a recipe's first comment line: a sentence cut at the line end reads as a fragment."""
    line = configs.summary(name)
    assert line.endswith((".", ")")) and len(line) <= 110, line


def test_dry_run_memory_per_strategy(tmp_path, monkeypatch):
    """13B full fine-tuning in bf16 at batch 4 (docs/scenario-13b.md). One process steps bf16 weights with bf16
    moments (8 bytes per parameter); DeepSpeed adds an fp32 master copy and fp32 moments (16 bytes), FSDP keeps
    what trains in fp32 (16 bytes too). DDP fits no 80 GiB card; ZeRO-2 divides gradients and optimizer state,
    FSDP / ZeRO-3 the weights too, so 8 cards of 40 GiB suffice; offloading leaves the least on the card, even on
    one card. DeepSpeed adds its gradient bucket on every card. On the CPU, FSDP and ZeRO-3 hold one copy while
    starting, offloading 16 bytes per parameter."""
    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    plan = main(load(TrainConfig, configs.path_of("llava15-finetune-full"),
                     ["dry_run=true", "shape=llava15-13b", "batch_size=4", "grad_accum=4"]))
    mem = plan["memory_gib_by_strategy"]
    ddp, zero2, fsdp, zero3, offload = (mem[k] for k in ("ddp", "zero2", "fsdp", "zero3", "zero3-offload"))
    trained = sum(c["trainable"] for c in plan["parameters"].values())
    frozen = sum(c["total"] for c in plan["parameters"].values()) - trained
    rest = plan["memory_gib"]["activations"] + plan["memory_gib"]["logits"]
    gib = 2**30
    bucket = 4 * 500_000_000 / gib  # DeepSpeed's gradient bucket, full size: 13B values train
    assert ddp[8] == ddp[1] == pytest.approx(plan["memory_gib"]["total"]) and ddp[8] > 80
    assert ddp[1] == pytest.approx((2 * frozen + 8 * trained) / gib + rest)
    assert zero3[1] == zero2[1] == pytest.approx((2 * frozen + 16 * trained) / gib + rest + bucket)
    assert fsdp[1] == ddp[1] and fsdp[8] < fsdp[4] < fsdp[2] < zero3[1]
    assert all(fsdp[n] + bucket == pytest.approx(zero3[n]) for n in (2, 4, 8))
    assert fsdp[8] < 40 < zero2[8] and all(offload[n] < zero3[n] < zero2[n] < ddp[n] for n in (4, 8))
    assert offload[1] < ddp[1] / 2
    cpu = plan["cpu_memory_gib"]
    assert cpu["zero3"] == plan["memory_gib"]["weights"] == pytest.approx((2 * frozen + 2 * trained) / gib)
    assert cpu["fsdp"] == pytest.approx((2 * frozen + 4 * trained) / gib)
    assert cpu["zero3-offload"] == pytest.approx(cpu["zero3"] + 16 * trained / gib) and cpu["ddp"] == cpu["zero2"] == 0


def test_the_13b_memory_table_is_what_the_dry_run_prints(tmp_path, monkeypatch):
    """docs/scenario-13b.md's table of GiB per card on 8 cards, row by row, from the commands above it."""
    import re
    from pathlib import Path

    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "scenario-13b.md").read_text()
    runs = {"full": ("llava15-finetune-full", ["batch_size=4", "grad_accum=4"]),
            "LoRA r128": ("llava15-finetune-lora", ["batch_size=16", "grad_accum=1"])}
    table = dict(re.findall(r"^\| (full|LoRA r128), batch \d+ per card \| (.+) \|$", doc, flags=re.M))
    assert table.keys() == runs.keys()
    for row, (recipe, keys) in runs.items():
        plan = main(load(TrainConfig, configs.path_of(recipe), ["dry_run=true", "shape=llava15-13b", *keys]))
        printed = [f"{plan['memory_gib_by_strategy'][k][8]:.1f}" for k in ("ddp", "zero2", "fsdp", "zero3",
                                                                            "zero3-offload")]
        assert table[row].split(" | ") == printed, row


def test_unknown_strategy_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["train", "tiny-lora", "--strategy", "zero4"])
    assert exit_info.value.code == 2 and "zero3-offload" in capsys.readouterr().err


def test_dry_run_counts_selective_checkpointing_and_the_vision_cache(tmp_path, monkeypatch, capsys):
    """Activations grow with every layer left out of checkpointing (LLaVA-1.5-7B: 32 layers, 4096 wide, bf16,
    batch 16 x 2048: 32h bytes more per token per layer); the vision cache is rows x 576 x 1024 x 2 bytes."""
    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    rows = [{"image": f"{i}.jpg", "conversations": [{"from": "human", "value": "<image>\nx"},
                                                     {"from": "gpt", "value": "y"}]} for i in range(1000)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    plan = {k: main(load(TrainConfig, configs.path_of("llava15-finetune-lora"),
                         ["dry_run=true", "data=d.json", "vision_cache=true", f"checkpoint_layers={k}"]))
            for k in (32, 30)}
    extra = plan[30]["memory_gib"]["activations"] - plan[32]["memory_gib"]["activations"]
    assert extra == pytest.approx(2 * 16 * 2048 * 32 * 4096 * 2 / 2**30)
    assert plan[32]["vision_cache_gib"] == pytest.approx(1000 * 576 * 1024 * 2 / 2**30)
    assert "about 1.1 GiB of disk" in capsys.readouterr().out
    (tmp_path / "d.json").write_text(json.dumps(rows[:24]))  # a few photos: MiB, not "0.0 GiB"
    main(load(TrainConfig, configs.path_of("llava15-finetune-lora"), ["dry_run=true", "data=d.json",
                                                                       "vision_cache=true"]))
    assert "about 27 MiB of disk" in capsys.readouterr().out


def test_keys_list_every_key_with_its_meaning(capsys):
    """Read from the config's source: a key added without a comment fails here."""
    import dataclasses

    from llavatune.train import BuildSpec, LoraSpec, TrainConfig

    listed = {key: (kind, default, meaning) for key, kind, default, meaning in configs.keys()}
    nested = {"build": BuildSpec, "lora": LoraSpec}
    expected = {f"{f.name}.{g.name}" if f.name in nested else f.name
                for f in dataclasses.fields(TrainConfig)
                for g in (dataclasses.fields(nested[f.name]) if f.name in nested else [f])}
    assert set(listed) == expected
    assert [k for k, (_, _, meaning) in listed.items() if not meaning] == []
    assert listed["lora.r"][:2] == ("int", "8") and listed["precision"][0] == "fp32 | bf16 | fp16"
    assert listed["model"][1] == "(required)" and listed["report_to"][1] == "['tensorboard']"
    assert listed["checkpoint_layers"][2].endswith("measured on the largest micro-batch (one GPU)")  # continued
    with pytest.raises(SystemExit) as exit_info:
        run(["configs", "keys"])
    out = capsys.readouterr().out  # not a terminal: a line per key, for grep
    assert exit_info.value.code in (0, None) and "\nlora.r  (int, default 8)  rank of each adapter\n" in out
