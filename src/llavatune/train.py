"""Verb `train`: one run of stage pretrain|finetune with method full|freeze|lora|qlora.

    llavatune train recipe.yaml [key=value ...]
    llavatune train recipe.yaml resume=auto
    llavatune train recipe.yaml --dry-run
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import ClassVar, Literal

from llavatune.config import check_bounds
from llavatune.hub import local_out


@dataclasses.dataclass
class LoraSpec:
    r: int = 8                       # rank of each adapter
    alpha: int = 16                  # scale: the update is multiplied by alpha / r
    dropout: float = 0.05            # on the adapter's input, in training only
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])  # or ["all"]
    regex: str | None = None         # full-match on module names; replaces targets (still LLM-only)
    vision: bool = False             # also put LoRA on the vision tower's attention/MLP

    KNOWN_AS: ClassVar[dict[str, str]] = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                                          "target_modules": "targets (or regex)"}  # peft's LoraConfig names

    def __post_init__(self):
        check_bounds(self, above_zero=("r", "alpha"))
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout is a probability below 1, got {self.dropout}")


@dataclasses.dataclass
class BuildSpec:
    """Assemble `model` first when that folder does not exist yet (same options as `llavatune build`)."""
    llm: str                         # hub id or folder of the chat LLM
    vision: str                      # hub id or folder of the vision encoder (CLIP, SigLIP)
    projector: str = "mlp2x_gelu"    # or linear
    template: str = "auto"           # conversation template written into the processor
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the LLM's own


@dataclasses.dataclass
class TrainConfig:
    model: Path                      # llava-hf folder (from `llavatune build`, a stage-1 run's final/, or a hub id)
    data: Path                       # training data (LLaVA JSON/JSONL, ShareGPT, messages, parquet)
    out: Path                        # run folder
    images: Path | None = None       # folder (or .zip archive) the data's image paths are relative to, or a
    #   table of images by id (columns id, image)
    eval_data: Path | None = None    # held-out rows (e.g. `data split`'s val.json, same image folder): their loss
    #   before the first step, every eval_every steps and at the end, next to the train loss
    eval_every: int | None = None    # steps; default save_every
    eval_answers: int = 0            # also answer the first N held-out questions greedily: eval_answers.jsonl
    build: BuildSpec | None = None   # build `model` from an LLM and an encoder if it is not there yet
    shape: str | None = None         # --dry-run only: architecture (llava15-7b, qwen15-4b, ...) when `model` is not on disk yet
    stage: Literal["pretrain", "finetune"] = "finetune"  # pretrain: the projector only, plain template
    method: Literal["full", "freeze", "lora", "qlora"] = "lora"  # what trains in finetune (docs/training.md)
    template: str | None = None      # default: the model's (plain for pretrain)
    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec)
    train_vision: bool = False       # unfreeze the vision tower (full/freeze) or train it next to LoRA
    trainable_layers: int = 0        # method freeze: how many last LLM layers train
    lr: float = 2e-4                 # peak learning rate
    projector_lr: float | None = None  # the projector's own peak rate (default: lr)
    weight_decay: float = 0.0        # AdamW's, on matrices only (not biases and norms)
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = "auto"  # auto: 8-bit when bitsandbytes and a GPU are there
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # the rate after warm-up, to 0 (or constant)
    warmup_ratio: float = 0.03       # share of the steps with a linear warm-up from 0
    batch_size: int = 4              # per device, per micro-batch
    grad_accum: int = 1              # micro-batches per step; global batch = batch_size x devices x grad_accum
    steps: int | None = None         # optimizer steps; default: `epochs` over the data
    epochs: float = 1.0              # passes over the data when steps is not given (fractions allowed)
    prompt_suffix: str = ""          # added to every question, as eval's --prompt-suffix: short / word / letter /
    #   letter-cn / unanswerable or text; for question/answer rows (the hub's sets), so that training asks as eval will
    max_length: int = 2048           # tokens per sample, image tokens included; longer ones are cut at the end
    #   (one whose image tokens do not fit is dropped and counted)
    max_grad_norm: float = 1.0       # gradient clipping (0: none)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 on GPUs that have it; fp16 with a loss scaler
    gradient_checkpointing: bool = False  # recompute LLM layers' activations in the backward: less memory, slower
    checkpoint_layers: int | Literal["auto"] | None = None  # with gradient_checkpointing: the first k LLM layers
    #   only (None = all); auto: as few as fit memory_budget_gib, measured on the largest micro-batch (one GPU)
    memory_budget_gib: float | None = None  # checkpoint_layers=auto: peak to stay within (default 90% of the GPU)
    attention: Literal["auto", "sdpa", "varlen", "flex_attention", "flash_attention_2", "eager"] = "auto"  # LLM's
    #   attention kernel (training/fast.py); varlen: torch's variable-length flash attention, for packed rows
    kernels: Literal["auto", "none", "liger"] = "auto"  # liger: fused RMSNorm/SwiGLU/RoPE; auto: on a GPU when installed
    compile: bool = False            # torch.compile each LLM decoder layer
    group_by_length: bool = True     # LLaVA's modality-length grouping
    packing: bool = False            # samples end to end without padding (loss identical; speed unmeasured yet)
    data_workers: int | Literal["auto"] = "auto"  # processes preparing the next batches; auto: 0 on a CPU, up to
    #   4 per GPU (the cores there are idle)
    vision_cache: bool = False       # frozen tower: image features computed once into <out>/vision_cache, then read
    seed: int = 0                    # data order, initialisation of new weights, dropout
    save_every: int = 200            # steps; 0 = only at the end
    keep_last: int = 3               # checkpoints kept (0 = all)
    log_every: int = 1               # steps between rows of metrics.jsonl
    report_to: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb
    nan_patience: int = 5            # stop after this many non-finite steps in a row
    on_bad_image: Literal["skip", "stop"] = "skip"  # a missing or corrupt image: skip and count, or stop
    resume: str | None = None        # auto | a checkpoint folder
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    strategy: Literal["ddp", "fsdp", "zero2", "zero3", "zero3-offload"] = "ddp"  # several processes; see docs/multi-gpu.md
    deepspeed_config: Path | None = None  # zero*: a DeepSpeed JSON refining the strategy's (e.g. deepspeed/zero3.json)
    dry_run: bool = False            # print the plan (model, data, trainable counts, steps, memory) and stop

    # the names HF's TrainingArguments and LLaVA's train.py give these keys: said as such, not as unknown keys
    KNOWN_AS: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "mm_projector_lr": "projector_lr", "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "max_steps": "steps",
        "output_dir": "out", "model_name_or_path": "model", "data_path": "data", "image_folder": "images",
        "model_max_length": "max_length", "lr_scheduler_type": "schedule", "save_steps": "save_every",
        "save_total_limit": "keep_last", "logging_steps": "log_every", "eval_steps": "eval_every",
        "dataloader_num_workers": "data_workers", "group_by_modality_length": "group_by_length",
        "resume_from_checkpoint": "resume", "version": "template (LLaVA's --version names the conversation template)",
        "bf16": "precision: bf16", "fp16": "precision: fp16", "tf32": "precision (tf32 is on with bf16 on a GPU)",
        "lora_enable": "method: lora", "bits": "method: qlora (4 bits)", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
        "lora_dropout": "lora.dropout", "tune_mm_mlp_adapter": "stage: pretrain (the projector alone)",
        "freeze_backbone": "method: freeze", "vision_tower": "build.vision (or a model built with llavatune build)",
        "deepspeed": "strategy: zero2 | zero3 | zero3-offload, and deepspeed_config for a JSON of your own",
        "gradient_checkpointing_kwargs": "checkpoint_layers", "mm_projector_type": "build.projector",
        "mm_vision_select_layer": "the model's own (llavatune build --feature-layer)",
        "image_aspect_ratio": "the model's own (llavatune build --image-aspect)"}

    def __post_init__(self):
        local_out(self.out)
        check_bounds(self, above_zero=("lr", "projector_lr", "batch_size", "grad_accum", "steps", "epochs",
                                       "max_length", "log_every", "nan_patience", "memory_budget_gib"),
                     at_least_zero=("weight_decay", "max_grad_norm", "save_every", "keep_last", "trainable_layers"))
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio is a share of the steps, from 0 to 1, got {self.warmup_ratio}")
        if self.eval_data is None and (self.eval_answers or self.eval_every is not None):
            raise ValueError("eval_every / eval_answers evaluate on held-out rows: give eval_data=FILE too.")
        if self.eval_answers < 0 or (self.eval_every or 0) < 0:
            raise ValueError("eval_every and eval_answers count steps and questions: 0 or more.")


def main(cfg: TrainConfig) -> Path | dict:
    """Train and return the final checkpoint folder; with dry_run, return the plan instead."""
    if cfg.dry_run:
        from llavatune.training.plan import dry_run
        return dry_run(cfg)
    if cfg.build is not None and not Path(cfg.model).exists():
        from llavatune import build
        build.main(build.BuildConfig(out=Path(cfg.model), llm=cfg.build.llm, vision=cfg.build.vision,
                                     projector=cfg.build.projector, template=cfg.build.template, dtype=cfg.build.dtype))
    from llavatune.training.runner import Run
    return Run(cfg).execute()


def eval_interval(cfg: TrainConfig) -> int:
    """Steps between held-out evaluations: eval_every, or one at every save (0: at the start and end only)."""
    return cfg.save_every if cfg.eval_every is None else cfg.eval_every


def data_manifest(path: Path) -> dict:
    """Where the data came from and its sha256 (over a folder's files in name order): what a run trained on. Hub
    data is recorded as its hf:// reference with the commit it came from."""
    from llavatune import hub
    from llavatune.data.tables import table_files

    local, digest = hub.data_path(path), hashlib.sha256()
    files = table_files(local) if hub.is_pattern(local) else sorted(local.rglob("*")) if local.is_dir() else [local]
    for file in files:
        if file.is_file():
            with file.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    where = ({"file": hub.data_name(path), "revision": hub.data_revision(local)} if hub.is_hub_data(path)
             else {"file": str(local.resolve())})
    return {**where, "sha256": digest.hexdigest()}


def total_steps(cfg: TrainConfig, n_batches_per_epoch: int, world: int = 1) -> int:
    """Optimizer steps: `steps`, or `epochs` over the data where a step takes grad_accum x world micro-batches."""
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_batches_per_epoch / (cfg.grad_accum * world)))


