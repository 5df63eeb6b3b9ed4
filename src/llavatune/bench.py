"""Verb `bench`: our training step against the plain HF Trainer + PEFT baseline, and our generation against
HF `generate`, same model, same data, same run.

    llavatune bench train --shape tiny --baseline hf --steps 3
    llavatune bench train --shape llava15-7b --method lora --lengths llava665k --steps 20     # on a GPU
    llavatune bench generate --shape llava15-7b                                               # on a GPU

Random-weight models built from configs (model/shapes.py), synthetic batches:
- fixed: every sample has one image and 160 text tokens (LLaVA-1.5-7B: 576 + 160 = 736 tokens);
- max: every sample has one image and fills max_length (the memory worst case);
- llava665k: the LLaVA-1.5 665K mix: 93.9% of samples with one image, 6.1% text-only; text lengths drawn from a
  log-normal with median 120 tokens (mu = ln 120, sigma = 0.8), clipped to [16, max_length - image tokens].
FLOPs per token (for MFU): forward 2N; backward 4N when weights train, 2N through frozen weights (activation
gradients only), N = parameters the token passes through (vision tower counted for image tokens' share only
in the forward).
Generation: time to first token = a generate() of one new token (prefill); decode tokens/s = batch x
(new_tokens - 1) / (time of new_tokens - time of one), every sample forced to new_tokens (random weights).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import math
import platform
import time
from pathlib import Path
from typing import Literal

import torch
from rich.table import Table

from llavatune import progress
from llavatune.errors import LlavatuneError
from llavatune.hub import local_out

console = progress.results
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


@dataclasses.dataclass
class BenchConfig:
    what: Literal["train", "generate"] = "train"
    shape: str = "tiny"                  # tiny | llava15-7b | llava15-13b | qwen15-4b | internlm2-1.8b
    method: Literal["lora", "qlora", "full"] = "lora"
    lengths: Literal["fixed", "llava665k", "max"] = "fixed"
    baseline: Literal["hf", "none"] = "hf"
    steps: int = 10                      # measured optimizer steps (after one warm-up step)
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 2048
    lora_r: int = 128
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: ["all"])
    gradient_checkpointing: bool = True  # both sides; the baseline checkpoints every layer
    # our side only (training/fast.py); the baseline keeps HF's defaults (SDPA, model loss, padding)
    packing: bool = False                # micro-batches without padding (the baseline pads)
    group_by_length: bool = True         # LLaVA's modality-length grouping, as `train` does by default
    attention: str = "auto"
    checkpoint_layers: int | Literal["auto"] | None = None  # auto: fit memory_budget_gib (GPU)
    memory_budget_gib: float | None = None  # auto's budget; default: the baseline's peak measured in this run
    kernels: Literal["auto", "none", "liger"] = "auto"
    compile: bool = False
    # generate
    batches: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 32])
    new_tokens: int = 128
    prompt_tokens: int = 32              # text tokens after the image
    seed: int = 0
    out: Path | None = None              # JSON results (default: bench-<shape>-<method>.json)

    def __post_init__(self):
        local_out(self.out)


def synthetic(cfg: BenchConfig, config, n: int) -> list[dict]:
    """n samples: input_ids with image placeholders expanded, labels on the text half."""
    g = torch.Generator().manual_seed(cfg.seed)
    n_image = config.image_seq_length
    vocab = config.image_token_id  # text ids below the image token
    out = []
    for _ in range(n):
        has_image = cfg.lengths != "llava665k" or torch.rand(1, generator=g).item() < 0.939
        if cfg.lengths == "fixed":
            n_text = 160
        elif cfg.lengths == "max":
            n_text = cfg.max_length - n_image
        else:
            n_text = int(math.exp(math.log(120) + 0.8 * torch.randn(1, generator=g).item()))
            n_text = max(16, min(n_text, cfg.max_length - n_image))
        text = torch.randint(3, vocab, (n_text,), generator=g)
        ids = torch.cat([torch.full((n_image,), config.image_token_id), text]) if has_image else text
        labels = ids.clone()
        labels[: len(ids) - n_text // 2] = -100
        out.append({"input_ids": ids, "labels": labels, "has_image": has_image})
    return out


def grouped(samples: list[dict], cfg: BenchConfig) -> list[dict]:
    """The same samples in the micro-batches `train` would form (data/dataset.py batch_order)."""
    from llavatune.data.dataset import batch_order

    lengths = [len(s["input_ids"]) * (1 if s["has_image"] else -1) for s in samples]
    return [samples[i] for batch in batch_order(lengths, cfg.batch_size, cfg.seed, True) for i in batch]


def build_model(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, ours: bool):
    """A random-weight model of the shape, with what trains opened; `ours` adds the fast path's switches."""
    from transformers import LlavaForConditionalGeneration

    from llavatune.model import shapes, trainable
    from llavatune.train import LoraSpec
    from llavatune.training import fast

    config = shapes.known(cfg.shape)
    if config is None:
        raise LlavatuneError(f"unknown shape '{cfg.shape}': choose tiny or one of {', '.join(shapes.SHAPES)}.")
    torch.manual_seed(cfg.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in the training dtype: a 7B model never exists in fp32
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    if cfg.method == "qlora":
        quantize_llm(model, dtype)
    if cfg.what == "generate":
        return model.eval(), config
    if ours:
        fast.configure(model, cfg.attention, cfg.kernels, device, cfg.packing)
    lora = LoraSpec(r=cfg.lora_r, alpha=2 * cfg.lora_r, dropout=0.0, targets=cfg.lora_targets)
    model = trainable.apply(model, "finetune", "full" if cfg.method == "full" else "lora", lora)
    if cfg.gradient_checkpointing:
        fast.checkpoint_layers(model, cfg.checkpoint_layers if ours else None)
    if ours and cfg.compile:
        fast.compile_layers(model)
    return model, config


def quantize_llm(model, dtype: torch.dtype) -> None:
    """nf4 + double quantization of the LLM's decoder linears in place, as a 4-bit load would leave them (a
    bench model has no file to load from); embeddings, lm_head, vision tower and projector stay as they are."""
    import bitsandbytes as bnb

    llm = model.model.language_model
    for name, module in list(llm.named_modules()):
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            parent, leaf = name.rsplit(".", 1)
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=dtype, quant_type="nf4", compress_statistics=True, device="meta")
            q.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True).to(module.weight.device)
            setattr(llm.get_submodule(parent), leaf, q)


def batches(samples: list[dict], cfg: BenchConfig, config, device, pack: bool = False) -> list[dict]:
    """Micro-batches in our collate's layout (right-padded, or packed) with pixel values for image samples."""
    from llavatune.data.dataset import Encoded, collate

    size = config.vision_config.image_size
    out = []
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start:start + cfg.batch_size]
        items = [Encoded(s["input_ids"].tolist(), s["labels"].tolist(),
                         torch.zeros(1, 3, size, size) if s["has_image"] else None) for s in chunk]
        out.append({k: v.to(device) for k, v in collate(items, pad_id=0, pack=pack).items()})
    return out


def run_ours(model, micro: list[dict], cfg: BenchConfig, device, dtype) -> float:
    """Seconds for cfg.steps optimizer steps of our loop's update (after one warm-up step)."""
    from llavatune.training import loop
    from llavatune.training.distributed import Ranks
    from llavatune.training.optim import build_optimizer

    optimizer = build_optimizer(model, "adamw", 1e-5, None, 0.0)
    plan = loop.Plan(cfg.steps, cfg.grad_accum, 1.0, 0, 1, 5)
    autocast = dtype if dtype != torch.float32 else None
    windows = [micro[i:i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
    loop._update(model, windows[0], optimizer, plan, device, autocast, None, Ranks())
    _sync(device)
    started = time.perf_counter()
    for window in windows[1:]:
        loop._update(model, window, optimizer, plan, device, autocast, None, Ranks())
    _sync(device)
    return time.perf_counter() - started


def run_hf(model, micro: list[dict], cfg: BenchConfig, device, dtype) -> float:
    """The usual recipe: transformers.Trainer over the same micro-batches (one warm-up step untimed)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(micro)

        def __getitem__(self, i):
            return micro[i]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            if state.global_step == 1:
                self.started = time.perf_counter()
            self.ended = time.perf_counter()

    clock = Clock()
    args = TrainingArguments(output_dir="/tmp/llavatune-bench-hf", per_device_train_batch_size=1,
                             gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.steps + 1, learning_rate=1e-5,
                             report_to=[], save_strategy="no", logging_strategy="no", bf16=dtype == torch.bfloat16,
                             use_cpu=device.type == "cpu", dataloader_num_workers=0, remove_unused_columns=False,
                             dataloader_pin_memory=False,  # the batches are on the device already
                             disable_tqdm=True)  # checkpointing is on the model already; unset, Trainer leaves it
    trainer = Trainer(model=model, args=args, train_dataset=Batches(), data_collator=lambda items: items[0],
                      callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-train dict would sit between our tables, unexplained
    trainer.train()
    return clock.ended - clock.started


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_token(model, method: str) -> float:
    def numel(p) -> int:  # a 4-bit weight stores two values per byte
        return p.numel() * (2 if getattr(p, "quant_type", None) == "nf4" else 1)

    total = sum(numel(p) for n, p in model.named_parameters() if "original_module" not in n)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2 * total + 2 * total + (2 * total if method == "full" else 2 * trained)


def main(cfg: BenchConfig) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = (bench_generate if cfg.what == "generate" else bench_train)(cfg, device, dtype)
    from llavatune.config import versions

    report = {"date": datetime.date.today().isoformat(), "device": _device_name(device),
              "config": dataclasses.asdict(cfg), "versions": versions(), "results": results}
    if cfg.what == "train" and "hf" in results:
        report["ratio_samples_per_s"] = results["ours"]["samples_per_s"] / results["hf"]["samples_per_s"]
        report["ratio_peak_mem"] = results["ours"]["peak_mem_gib"] / results["hf"]["peak_mem_gib"]
    out = cfg.out or Path(f"bench-{cfg.what}-{cfg.shape}-{cfg.method}.json")
    Path(out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (_print_generate if cfg.what == "generate" else _print)(report, out)
    return report


def bench_train(cfg: BenchConfig, device, dtype) -> dict:
    from llavatune.data.dataset import n_samples, n_tokens
    from llavatune.training.loop import memory_gib

    results = {}
    # the baseline first: Liger patches transformers' module classes for the rest of the process
    for name, runner in [*([("hf", run_hf)] if cfg.baseline == "hf" else []), ("ours", run_ours)]:
        model, config = build_model(cfg, device, dtype, ours=name == "ours")
        samples = synthetic(cfg, config, (cfg.steps + 1) * cfg.batch_size * cfg.grad_accum)
        if name == "ours" and cfg.group_by_length:
            samples = grouped(samples, cfg)
        micro = batches(samples, cfg, config, device, pack=cfg.packing and name == "ours")
        fitted = cfg.checkpoint_layers if name == "ours" else None
        if fitted == "auto" and cfg.gradient_checkpointing:
            fitted = fit(model, micro, cfg, results, device, dtype)
        _reset_peak(device)
        seconds = runner(model, micro, cfg, device, dtype)
        measured = micro[cfg.grad_accum:]  # the warm-up step's micro-batches are not timed
        real = sum(n_tokens(b) for b in measured)
        padded = sum(b["input_ids"].numel() for b in measured)
        samples_done = sum(n_samples(b) for b in measured)
        flops = flops_per_token(model, cfg.method) * real / seconds
        peak = _peak_tflops(device)
        results[name] = {"samples_per_s": samples_done / seconds, "tokens_per_s": real / seconds,
                         "pad_fraction": 1 - real / padded, "peak_mem_gib": memory_gib(device),
                         "mfu": flops / (peak * 1e12) if peak else None}
        if name == "ours" and cfg.gradient_checkpointing:
            results[name]["checkpoint_layers"] = fitted  # None: every layer
        del model, micro
        _free(device)
    return results


def fit(model, micro: list[dict], cfg: BenchConfig, results: dict, device, dtype) -> int:
    """checkpoint_layers=auto for our side: the budget is the baseline's peak unless one is given."""
    from llavatune.training import loop

    if device.type != "cuda":
        raise LlavatuneError("checkpoint_layers=auto measures GPU memory: run it on a GPU, or give a number of "
                             "layers.")
    budget = cfg.memory_budget_gib or (results["hf"]["peak_mem_gib"] if "hf" in results else None)
    largest = max(micro, key=lambda b: b["input_ids"].numel())
    return loop.fit_checkpointing(model, largest, budget, device, dtype if dtype != torch.float32 else None)


@torch.no_grad()
def bench_generate(cfg: BenchConfig, device, dtype) -> dict:
    """Per batch size: HF generate (dynamic cache) and ours (inference/generate.py: static cache, compiled
    decode), on the same random model and the same prompts (one image + prompt_tokens text tokens)."""
    from llavatune.inference.generate import speed_kwargs

    model, config = build_model(cfg, device, dtype, ours=True)
    size = config.vision_config.image_size
    g = torch.Generator().manual_seed(cfg.seed)
    results = {}
    for batch in cfg.batches:
        text = torch.randint(3, config.image_token_id, (batch, cfg.prompt_tokens), generator=g)
        ids = torch.cat([torch.full((batch, config.image_seq_length), config.image_token_id), text], dim=1)
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                  "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device, dtype)}
        for name, extra in (("hf", {}), ("ours", speed_kwargs(device))):
            def timed(n: int) -> float:
                _sync(device)
                started = time.perf_counter()
                model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra)
                _sync(device)
                return time.perf_counter() - started

            timed(cfg.new_tokens)  # warm-up (compiles our decode step for this batch size)
            first = min(timed(1) for _ in range(2))
            whole = timed(cfg.new_tokens)
            results[f"{name}@{batch}"] = {"batch": batch, "engine": name, "ttft_s": first,
                                          "decode_tokens_per_s": batch * (cfg.new_tokens - 1) / (whole - first)}
        _free(device)
    return results


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_tflops(device) -> float | None:
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"


def _print(report: dict, out) -> None:
    table = Table(title=f"bench train on {report['device']}, {report['date']}")
    for col in ("", "samples/s", "real tokens/s", "pad fraction", "peak memory GiB", "MFU"):
        table.add_column(col, justify="right")
    for name, r in report["results"].items():
        table.add_row(name, f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:.0f}", f"{r['pad_fraction']:.3f}",
                      f"{r['peak_mem_gib']:.2f}", f"{r['mfu']:.1%}" if r["mfu"] else "n/a")
    console.print(table)
    if "ratio_samples_per_s" in report:
        console.print(f"ours / hf: {report['ratio_samples_per_s']:.2f}x samples/s, "
                      f"{report['ratio_peak_mem']:.2f}x peak memory  (JSON: {out})")


def _print_generate(report: dict, out) -> None:
    table = Table(title=f"bench generate on {report['device']}, {report['date']}")
    for col in ("batch", "engine", "time to first token s", "decode tokens/s", "ours / hf"):
        table.add_column(col, justify="right")
    results = report["results"]
    for key, r in results.items():
        hf = results.get(f"hf@{r['batch']}")
        ratio = f"{r['decode_tokens_per_s'] / hf['decode_tokens_per_s']:.2f}x" if hf and r["engine"] == "ours" else ""
        table.add_row(str(r["batch"]), r["engine"], f"{r['ttft_s']:.3f}", f"{r['decode_tokens_per_s']:.1f}", ratio)
    console.print(table)
    console.print(f"JSON: {out}")
