"""`train --dry-run`: the run plan without loading weights: model, data, what trains, steps, memory.

The model is built on the meta device from its config (a folder's config.json, or the known shapes of
model/shapes.py for hub ids and build specs), so even a 13B plan costs no memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from llavatune.data.formats import iter_rows
from llavatune.errors import LlavatuneError
from llavatune.model import shapes, trainable
from llavatune.train import TrainConfig, eval_interval, total_steps

console = Console()
GIB = 2**30


def model_config(cfg: TrainConfig):
    from transformers import AutoConfig

    folder = Path(cfg.model)
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(folder)
    if cfg.build is not None and cfg.build.llm in shapes.LLM and cfg.build.vision in shapes.VISION:
        return shapes.llava_config(cfg.build.llm, cfg.build.vision)
    config = shapes.known(cfg.shape or str(cfg.model))
    if config is None:
        raise LlavatuneError(f"--dry-run: {cfg.model} is not on disk and its architecture is not among the known "
                             f"shapes ({', '.join([*shapes.LLAVA, *shapes.SHAPES])}); build or download it first.")
    return config


def meta_model(cfg: TrainConfig):
    from transformers import LlavaForConditionalGeneration

    config = model_config(cfg)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return trainable.apply(model, cfg.stage, cfg.method, cfg.lora, cfg.train_vision, cfg.trainable_layers), config


def count_rows(path: Path) -> int | None:
    if not Path(path).exists():
        return None
    return sum(1 for _ in iter_rows(Path(path)))


def memory_estimate(model, config, cfg: TrainConfig, devices: int = 1) -> dict[str, float]:
    """GiB per device, rough: weights, gradients, optimizer states, activations (at max_length), logits."""
    b = _value_bytes(cfg)
    c = trainable.counts(model)
    frozen = sum(v["total"] - v["trainable"] for v in c.values())
    trained = sum(v["trainable"] for v in c.values())
    if cfg.method == "qlora":  # LLM linear weights in nf4 (~0.55 byte with double-quantized scales)
        llm_frozen = c.get("llm", {}).get("total", 0) - c.get("llm", {}).get("trainable", 0)
        weights = (frozen - llm_frozen) * b + llm_frozen * 0.55
    else:
        weights = frozen * b
    master = 4 if cfg.method != "full" else b  # small trained parts keep fp32 weights
    weights += trained * master
    grads = trained * master
    optim_bytes = 2 if cfg.optimizer == "adamw_8bit" else 2 * master
    text = config.text_config
    tokens = cfg.batch_size * cfg.max_length
    layers = text.num_hidden_layers
    checkpointed = 0 if not cfg.gradient_checkpointing else (
        cfg.checkpoint_layers if isinstance(cfg.checkpoint_layers, int) else layers)  # auto: sized at run time
    # bytes per token: a checkpointed layer keeps its input (2h values), another all its activations (~34h)
    acts = tokens * text.hidden_size * b * (2 * checkpointed + 34 * (layers - checkpointed))
    if cfg.gradient_checkpointing:
        acts += tokens * 34 * text.hidden_size * b  # one layer recomputed at a time
    logits = tokens * text.vocab_size * 4 * 2  # fp32 logits and gradient; an upper bound: only target positions
                                                # get logits (training/fast.py), in LLaVA data a small share
    parts = {"weights": weights, "gradients": grads, "optimizer": trained * optim_bytes, "activations": acts,
             "logits": logits}
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def _value_bytes(cfg: TrainConfig) -> int:
    """Bytes per weight or activation value in the run's precision."""
    return 2 if cfg.precision in ("bf16", "fp16") else 4


def by_strategy(memory: dict[str, float], n_layers: int, devices=(1, 2, 4, 8)) -> dict[str, dict[int, float]]:
    """GiB per device for each strategy and device count; activations and logits always stay per device.
    ddp: a whole copy everywhere. zero2: whole weights, gradients and optimizer state divided by the devices.
    fsdp / zero3: all three divided, plus two layers' weights whole (the one computing and the one
    prefetched). zero3-offload: ZeRO-3 with weights and optimizer state in CPU memory (only the gathered layers
    and the gradient shards stay on the GPU)."""
    w, g, o = memory["weights"], memory["gradients"], memory["optimizer"]
    rest, layers = memory["activations"] + memory["logits"], 2 * w / n_layers
    whole = w + g + o + rest
    def all_sharded(n: int) -> float:
        return (w + g + o) / n + layers + rest

    per_n = {"ddp": lambda n: whole, "zero2": lambda n: w + (g + o) / n + rest, "fsdp": all_sharded,
             "zero3": all_sharded, "zero3-offload": lambda n: g / n + layers + rest}
    return {name: {n: f(n) if n > 1 else whole for n in devices} for name, f in per_n.items()}


def dry_run(cfg: TrainConfig) -> dict:
    model, config = meta_model(cfg)
    rows = count_rows(cfg.data)
    steps = total_steps(cfg, math.ceil(rows / cfg.batch_size)) if rows else cfg.steps
    counts = trainable.counts(model)
    memory = memory_estimate(model, config, cfg)
    plan = {"model": str(cfg.model), "llm": config.text_config.model_type, "vision": config.vision_config.model_type,
            "image_tokens": config.image_seq_length, "stage": cfg.stage, "method": cfg.method,
            "parameters": counts, "data_rows": rows, "steps": steps,
            "global_batch": cfg.batch_size * cfg.grad_accum, "memory_gib": memory,
            "memory_gib_by_strategy": by_strategy(memory, config.text_config.num_hidden_layers)}
    if cfg.eval_data is not None:
        plan["eval_rows"] = count_rows(cfg.eval_data)
    if cfg.vision_cache and rows:  # one image per row: (image tokens, vision hidden) in the training dtype
        per_image = config.image_seq_length * config.vision_config.hidden_size * _value_bytes(cfg)
        plan["vision_cache_gib"] = rows * per_image / GIB
    _print(plan, cfg)
    return plan


def _print(plan: dict, cfg: TrainConfig) -> None:
    table = Table(title=f"dry run: {cfg.out}", show_header=False)
    table.add_row("model", f"{plan['model']} ({plan['llm']} + {plan['vision']}, {plan['image_tokens']} image tokens)")
    table.add_row("stage / method", f"{plan['stage']} / {plan['method']}")
    for comp, v in sorted(plan["parameters"].items()):
        table.add_row(f"  {comp}", f"{v['trainable']:,} trainable of {v['total']:,}")
    table.add_row("data", f"{cfg.data}: " + (f"{plan['data_rows']:,} rows" if plan["data_rows"] is not None
                                             else "not found (steps from `steps`)"))
    steps = plan["steps"] if plan["steps"] is not None else "unknown until the data is there"
    table.add_row("steps", f"{steps} optimizer steps of {plan['global_batch']} samples")
    if cfg.eval_data is not None:
        every = eval_interval(cfg)
        rows = f"{plan['eval_rows']:,} rows" if plan["eval_rows"] is not None else "not found"
        table.add_row("held-out eval", f"{cfg.eval_data}: {rows}; at the start, " + (f"every {every} steps " if every
                      else "") + "and at the end" + (f", {cfg.eval_answers} answers" if cfg.eval_answers else ""))
    mem = plan["memory_gib"]
    table.add_row("memory (rough)", f"{mem['total']:.1f} GiB per device = " + ", ".join(
        f"{k} {v:.1f}" for k, v in mem.items() if k != "total"))
    if "vision_cache_gib" in plan:
        table.add_row("vision cache", f"about {plan['vision_cache_gib']:.1f} GiB of disk in {cfg.out}/vision_cache "
                      "(one image per row)")
    for strategy, per_n in plan["memory_gib_by_strategy"].items():
        table.add_row(f"  --strategy {strategy}", ", ".join(f"{n} GPU{'s' if n > 1 else ''}: {v:.1f} GiB"
                                                           for n, v in per_n.items()))
    console.print(table)
