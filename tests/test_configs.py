"""Shipped recipes: listed, shown, copied, and every one plans on a CPU without weights."""

from __future__ import annotations

import pytest

from llavatune import configs
from llavatune.cli import run

REQUIRED = {"tiny-pretrain", "tiny-lora", "tiny-qlora", "tiny-full", "llava15-7b-lora-textvqa1k",
            "qwen15-4b-clip336-lora", "defect-okng-lora", "llava15-pretrain", "llava15-finetune-lora",
            "llava15-finetune-full", "internlm2-1.8b-qlora-pretrain", "internlm2-1.8b-qlora-finetune"}


def test_required_recipes_ship():
    assert REQUIRED <= set(configs.names())


@pytest.mark.parametrize("name", sorted(configs.names()))
def test_every_recipe_dry_runs(name, tmp_path, monkeypatch):
    from llavatune.config import load
    from llavatune.train import TrainConfig, main

    monkeypatch.chdir(tmp_path)
    plan = main(load(TrainConfig, configs.path_of(name), ["dry_run=true"]))
    assert plan["steps"] or plan["data_rows"] is None  # epoch recipes count steps once their data is there
    assert plan["memory_gib"]["total"] > 0
    assert sum(v["trainable"] for v in plan["parameters"].values()) > 0


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
