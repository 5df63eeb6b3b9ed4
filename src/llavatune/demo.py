"""Verb `demo`: the whole life of a LLaVA in one offline, deterministic command on a CPU.

synthetic data -> tiny model -> stage 1 (projector) -> stage 2 (LoRA) -> merge -> evaluate base vs fine-tuned
on a held-out split -> report and loss curves.

    llavatune demo --out runs/demo
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from llavatune import progress
from llavatune.config import load, save_run_config
from llavatune.hub import local_out

console = progress.messages


@dataclasses.dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    samples: int = 400               # synthetic images (each with a caption and a question)
    pretrain_steps: int = 250
    finetune_steps: int = 500
    val: float = 0.15                # held-out share for the before/after evaluation
    seed: int = 0
    overwrite: bool = True           # the demo folder is rebuilt on every run

    def __post_init__(self):
        local_out(self.out)


def main(cfg: DemoConfig) -> dict:
    """The whole run; transformers' "Loading weights" bars are left out: five of them, each for an instant, for a
    model of 134K parameters, between the steps' own output."""
    with progress.without_transformers_bars():
        return _run(cfg)


def _run(cfg: DemoConfig) -> dict:
    from llavatune import build, configs, evaluate, merge, train
    from llavatune.data import tools
    from llavatune.data.synth import SynthConfig
    from llavatune.data.synth import main as synth

    started = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and cfg.overwrite:
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    step = _stepper()
    step("synthetic data")
    data = synth(SynthConfig(out=out / "data", n=cfg.samples, seed=cfg.seed, tasks=["colour", "shape"]))
    train_rows, val_rows = tools.split(data / "qa.json", cfg.val, cfg.seed)
    tools.write_rows(data / "train.json", train_rows)
    tools.write_rows(data / "val.json", val_rows)
    held_out = {row["image"] for row in tools.rows_of(data / "val.json")}  # stage 1 does not see them either
    tools.write_rows(data / "captions-train.json",
                     (row for row in tools.rows_of(data / "captions.json") if row["image"] not in held_out))
    step("tiny model")
    base = build.main(build.BuildConfig(out=out / "models" / "tiny", preset="tiny", seed=cfg.seed))
    step("stage 1: projector pre-training")
    recipe = lambda name, *kv: load(train.TrainConfig, configs.path_of(name), [*kv, f"seed={cfg.seed}"])  # noqa: E731
    stage1 = train.main(recipe("tiny-pretrain", f"model={base}", f"data={data / 'captions-train.json'}",
                               f"images={data}", f"out={out / 'runs' / 'pretrain'}", f"steps={cfg.pretrain_steps}"))
    step("stage 2: LoRA instruction tuning")
    train.main(recipe("tiny-lora", f"model={stage1}", f"data={data / 'train.json'}", f"images={data}",
                      f"out={out / 'runs' / 'lora'}", f"steps={cfg.finetune_steps}",
                      f"eval_data={data / 'val.json'}", "eval_answers=8"))  # held-out loss and answers as it trains
    step("merge")
    tuned = merge.main(merge.MergeConfig(run=out / "runs" / "lora", out=out / "models" / "tiny-tuned"))
    step("evaluate base vs fine-tuned")
    result = evaluate.main(evaluate.EvalConfig(model=base, compare=tuned, data=data / "val.json", images=data,
                                               out=out / "eval", batch_size=16, max_new_tokens=6))
    seconds = time.perf_counter() - started
    save_run_config(out, "demo", cfg, result=result, seconds=round(seconds, 1))
    _summary(out, result, seconds)
    return result


def _stepper():
    count = {"n": 0}

    def step(title: str) -> None:
        count["n"] += 1
        console.rule(f"[bold]{count['n']}/6 {title}")
    return step


def _summary(out: Path, result: dict, seconds: float) -> None:
    before = result["models"]["base"]["exact_match"]
    after = result["models"]["finetuned"]["exact_match"]
    console.rule("[bold green]demo finished")
    lines = [
        f"exact match on {result['n']} held-out questions: before {before:.3f}, after {after:.3f}",
        f"time: {seconds:.0f} s",
        f"data:        {out / 'data'}",
        f"models:      {out / 'models' / 'tiny'} (base), {out / 'models' / 'tiny-tuned'} (merged)",
        f"runs:        {out / 'runs' / 'pretrain'}, {out / 'runs' / 'lora'} (loss.png, metrics.jsonl, checkpoints)",
        f"evaluation:  {out / 'eval' / 'report.html'}, {out / 'eval' / 'metrics.json'}",
    ]
    print("\n".join(lines))
    print(json.dumps({"before": before, "after": after}))
