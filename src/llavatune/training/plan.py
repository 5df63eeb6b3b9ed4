"""`train --dry-run`: the run plan without loading weights: model, data, what trains, steps, memory.

The model is built on the meta device from its config (a folder's config.json, or the known shapes of
model/shapes.py for hub ids and build specs), so even a 13B plan costs no memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from rich.table import Table

from llavatune import hub, progress
from llavatune.data import formats
from llavatune.data.formats import iter_rows
from llavatune.errors import LlavatuneError
from llavatune.model import shapes, trainable
from llavatune.train import TrainConfig, eval_interval, total_steps
from llavatune.training.distributed import REDUCE_BUCKET

console = progress.results
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
    if not formats.exists(path):  # hub data: downloaded here
        return None
    return sum(1 for _ in iter_rows(Path(path)))


def memory_estimate(model, config, cfg: TrainConfig, strategy: str = "ddp") -> dict[str, float]:
    """GiB for the whole model, rough: weights, gradients, optimizer states, activations (at max_length), logits.
    What a trained parameter costs depends on who steps it: our AdamW keeps it in its own dtype (fp32 for the
    small parts of a bf16 run, bf16 under full fine-tuning); FSDP stores it in fp32 (training/distributed.py);
    DeepSpeed's ZeRO optimizer adds an fp32 master copy (12 bytes of optimizer state with the two moments)."""
    b = _value_bytes(cfg)
    c = trainable.counts(model)
    frozen = sum(v["total"] - v["trainable"] for v in c.values())
    trained = sum(v["trainable"] for v in c.values())
    if cfg.method == "qlora":  # LLM linear weights in nf4 (~0.55 byte with double-quantized scales)
        llm_frozen = c.get("llm", {}).get("total", 0) - c.get("llm", {}).get("trainable", 0)
        weights = (frozen - llm_frozen) * b + llm_frozen * 0.55
    else:
        weights = frozen * b
    master = 4 if cfg.method != "full" or strategy == "fsdp" else b  # small trained parts keep fp32 weights
    weights += trained * master
    grads = trained * master
    if strategy.startswith("zero"):  # DeepSpeed: an fp32 master copy, and the moments of that copy
        optim_bytes = 4 + (2 if cfg.optimizer == "adamw_8bit" else 8)
    else:
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
    if strategy.startswith("zero"):  # DeepSpeed's fp32 gradient bucket, whole on every device
        parts["bucket"] = 4 * min(REDUCE_BUCKET, trained)
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


STRATEGIES = ("ddp", "zero2", "fsdp", "zero3", "zero3-offload")


def _value_bytes(cfg: TrainConfig) -> int:
    """Bytes per weight or activation value in the run's precision."""
    return 2 if cfg.precision in ("bf16", "fp16") else 4


def by_strategy(parts: dict[str, dict[str, float]], n_layers: int,
                devices=(1, 2, 4, 8)) -> dict[str, dict[int, float]]:
    """GiB per device for each strategy and device count, from each strategy's memory_estimate; activations,
    logits and DeepSpeed's gradient bucket always stay per device. ddp: a whole copy everywhere. zero2: whole
    weights, gradients and optimizer state divided by the devices. fsdp / zero3: all three divided, plus two
    layers' weights whole (the one computing and the one prefetched). zero3-offload: ZeRO-3 with weights and
    optimizer state in CPU memory (only the gathered layers and the gradient shards stay on the GPU), which is
    how a model too big for one card trains on it."""
    plain = parts["ddp"]
    rest = plain["activations"] + plain["logits"]
    layers = 2 * plain["weights"] / n_layers  # gathered in the compute dtype
    out = {}
    for strategy, m in parts.items():
        w, g, o, whole = m["weights"], m["gradients"], m["optimizer"], rest + m.get("bucket", 0)
        if strategy == "ddp":
            out[strategy] = {n: m["total"] for n in devices}
        elif strategy == "zero2":
            out[strategy] = {n: w + (g + o) / n + whole for n in devices}
        elif strategy == "zero3-offload":
            out[strategy] = {n: g / n + layers + whole for n in devices}
        elif strategy == "fsdp":  # one process trains as a plain one, without FSDP
            out[strategy] = {n: (w + g + o) / n + layers + rest if n > 1 else plain["total"] for n in devices}
        else:  # zero3, through DeepSpeed even in one process
            out[strategy] = {n: (w + g + o) / n + (layers if n > 1 else 0) + whole for n in devices}
    return out


def cpu_memory(parts: dict[str, dict[str, float]], trained: int) -> dict[str, float]:
    """GiB of CPU memory on the first machine, rough, for each strategy. ddp / zero2: weights stream from the
    files to each GPU (little). fsdp / zero3: rank 0 holds the whole model while it is sharded out (FSDP with
    what trains in fp32). zero3-offload: for the whole run, the weights and, per trained parameter, DeepSpeed's
    fp32 master copy, fp32 gradient and two AdamW moments (16 bytes)."""
    zero3 = parts["zero3"]["weights"]
    return {"ddp": 0.0, "zero2": 0.0, "fsdp": parts["fsdp"]["weights"], "zero3": zero3,
            "zero3-offload": zero3 + 16 * trained / GIB}


def dry_run(cfg: TrainConfig, devices: int = 1) -> dict:
    """The plan of a run on `devices` devices (processes) in all, printed: no weights are read, no process is
    started, so a laptop plans the run of a cluster."""
    model, config = meta_model(cfg)
    rows = count_rows(cfg.data)
    steps = total_steps(cfg, math.ceil(rows / cfg.batch_size), devices) if rows else cfg.steps
    counts = trainable.counts(model)
    parts = {strategy: memory_estimate(model, config, cfg, strategy) for strategy in STRATEGIES}
    memory = parts["ddp"]
    plan = {"model": str(cfg.model), "llm": config.text_config.model_type, "vision": config.vision_config.model_type,
            "image_tokens": config.image_seq_length, "stage": cfg.stage, "method": cfg.method,
            "trains": trainable.describe(cfg.stage, cfg.method),
            "parameters": counts, "data_rows": rows, "steps": steps,
            "devices": devices, "global_batch": cfg.batch_size * cfg.grad_accum * devices, "memory_gib": memory,
            "memory_gib_by_strategy": by_strategy(parts, config.text_config.num_hidden_layers),
            "cpu_memory_gib": cpu_memory(parts, sum(c["trainable"] for c in counts.values()))}
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
    table.add_row("trains", plan["trains"])
    for comp, v in sorted(plan["parameters"].items()):
        table.add_row(f"  {comp}", f"{v['trainable']:,} trainable of {v['total']:,}")
    rows = f"{plan['data_rows']:,} rows" if plan["data_rows"] is not None else "not found (steps from `steps`)"
    table.add_row("data", f"{hub.data_name(cfg.data)}: {rows}")
    steps = f"{plan['steps']} optimizer steps" if plan["steps"] is not None else "unknown (no data rows yet)"
    table.add_row("steps", f"{steps} of {plan['global_batch']} samples ({cfg.batch_size} per device x "
                           f"{plan['devices']} device(s) x {cfg.grad_accum} accumulation)")
    if cfg.eval_data is not None:
        every = eval_interval(cfg)
        rows = f"{plan['eval_rows']:,} rows" if plan["eval_rows"] is not None else "not found"
        when = (f"every {every} steps " if every else "") + "and at the end"
        table.add_row("held-out eval", f"{hub.data_name(cfg.eval_data)}: {rows}; at the start, {when}"
                      + (f", {cfg.eval_answers} answers" if cfg.eval_answers else ""))
    mem = plan["memory_gib"]
    table.add_row("memory (rough)", f"{mem['total']:.1f} GiB per device = " + ", ".join(
        f"{k} {v:.1f}" for k, v in mem.items() if k != "total")
        + f"; an upper bound: every batch padded to max_length {cfg.max_length}")
    if "vision_cache_gib" in plan:
        gib = plan["vision_cache_gib"]
        size = f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.0f} MiB"  # a few photos: MiB, not "0.0 GiB"
        table.add_row("vision cache", f"about {size} of disk in {cfg.out}/vision_cache (one image per row)")
    for strategy, per_n in plan["memory_gib_by_strategy"].items():
        table.add_row(f"  --strategy {strategy}", ", ".join(f"{n} GPU{'s' if n > 1 else ''}: {v:.1f} GiB"
                                                           for n, v in per_n.items()))
    cpu = plan["cpu_memory_gib"]
    table.add_row("CPU memory (rough)", f"ddp, zero2: little (weights stream to the GPUs); fsdp: {cpu['fsdp']:.1f} "
                  f"GiB, zero3: {cpu['zero3']:.1f} GiB on rank 0 while starting; zero3-offload: "
                  f"{cpu['zero3-offload']:.1f} GiB for the whole run")
    console.print(table)
