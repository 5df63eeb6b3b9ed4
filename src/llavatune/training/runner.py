"""Wire one training run: model + what trains, data, optimizer, resume, logging, the loop, checkpoints."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llavatune import hub, progress
from llavatune.config import read_run_config, save_run_config, to_dict
from llavatune.data import formats
from llavatune.data import images as imagelib
from llavatune.data.dataset import SupervisedDataset, batch_order, collate, n_tokens
from llavatune.data.loader import auto_workers
from llavatune.data.templates import get_template, to_jinja
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib
from llavatune.model import trainable
from llavatune.model.meta import template_name
from llavatune.model.save import save_model
from llavatune.train import TrainConfig, data_manifest, eval_interval, total_steps
from llavatune.training import checkpoint, distributed, fast, loop, validate
from llavatune.training.logging import RunLogger
from llavatune.training.optim import build_optimizer, build_scheduler, continue_schedule

console = progress.messages
PRECISION = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Run:
    def __init__(self, cfg: TrainConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        wanted = loadlib.pick_device(cfg.device)  # a GPU asked for must be there (--gpus sets device=cuda)
        self.ranks, device = distributed.setup(cfg.device, cfg.strategy)
        self.device = device or wanted
        self.dtype = PRECISION[cfg.precision]
        self.autocast = None if cfg.precision == "fp32" else self.dtype  # fp32 runs without autocast

    def execute(self) -> Path:
        """Train; the process group (a one-process one for ZeRO on one device) is torn down on every exit, so an
        in-process caller is left as it was, and a failed run does not wait on ranks that may be gone."""
        try:
            final = self._train()
        except BaseException:
            self.ranks.close(wait=False)
            raise
        self.ranks.close()
        return final

    def _train(self) -> Path:
        cfg = self.cfg
        resume_from = self._resume_folder()
        self.workers = auto_workers(cfg.data_workers, self.device)  # checked before anything loads
        self.base = _check_paths(cfg)
        _seed(cfg.seed)
        self._load(resume_from)
        lengths = [self.dataset.length(i) for i in range(len(self.dataset))]

        @functools.lru_cache(maxsize=2)  # the loop asks every step; 665K rows take ~1 s to order
        def order(epoch: int) -> list[list[int]]:
            return batch_order(lengths, cfg.batch_size, cfg.seed + epoch, cfg.group_by_length)

        steps = total_steps(cfg, len(order(0)), self.ranks.world)
        if cfg.vision_cache:
            self._vision_cache()
        if cfg.gradient_checkpointing and cfg.checkpoint_layers == "auto":
            self._fit_checkpointing(lengths, order(0))
        model = self.ranks.wrap(self.model, self.dtype)  # FSDP2 shards self.model in place: the optimizer comes after
        optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.projector_lr, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.schedule, round(cfg.warmup_ratio * steps), steps)
        if self.ranks.deepspeed:  # the engine wraps model and optimizer; the scheduler drives the same groups
            model, optimizer = self.ranks.engine(model, optimizer, cfg.batch_size, cfg.grad_accum, cfg.max_grad_norm,
                                                 self.autocast, cfg.deepspeed_config)
        state = loop.State()
        if resume_from is not None:
            state = self._restore(resume_from, model, optimizer, scheduler)
            if resume_from.name == "final" and state.step >= steps:  # not rewritten: a full 7B is 14 GB
                self._say(f"{self.out} finished at step {state.step}: nothing left to train of {steps} steps "
                          "(give more steps= to continue it).")
                return resume_from
        logger = self._start_logging(steps, state)
        plan = loop.Plan(steps, cfg.grad_accum, cfg.max_grad_norm, cfg.save_every, cfg.log_every, cfg.nan_patience,
                         cfg.packing, self.workers, eval_interval(cfg))

        def save(st: loop.State, name: str | None = None) -> None:
            weights = self.ranks.model_state(model)  # every rank takes part in gathering; rank 0 writes
            trainer_state = {"loop": st.__dict__, "optimizer": self.ranks.optimizer_state(model, optimizer),
                             "scheduler": scheduler.state_dict(), "rng": loop.rng_state()}
            if self.ranks.main:
                self._save(self.out / (name or f"checkpoint-{st.step}"), st.step, trainer_state, weights)
                checkpoint.prune(self.out, cfg.keep_last, keep_step=validate.lowest_step(logger.rows))
                logger.plot(self.out / "loss.png")
            self.ranks.barrier()

        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and self.device.type == "cuda" else None
        state = loop.train(model, self.dataset, order, optimizer, scheduler, plan, state,
                           device=self.device, autocast_dtype=self.autocast,
                           pad_id=self.processor.tokenizer.pad_token_id, logger=logger, save=save, scaler=scaler,
                           ranks=self.ranks, evaluate=self._evaluator(model, logger))
        save(state, "final")
        logger.close()
        self._say(f"[green]done[/green]: {state.step} {'step' if state.step == 1 else 'steps'}, final checkpoint "
                  f"{self.out / 'final'}" + (f"; on rank 0, {self.dataset.dropped()}" if self.dataset.skipped else ""))
        if self.ranks.main and cfg.eval_data is not None:
            self._say(validate.summary(logger.rows, self.out, state.step))
        return self.out / "final"

    def _evaluator(self, model, logger):
        """evaluate(state) for the loop when eval_data is given: a metrics row, answers, a line on the terminal."""
        cfg = self.cfg
        if cfg.eval_data is None:
            return None
        validator = validate.Validator(self.eval_dataset, cfg.batch_size, self.processor.tokenizer.pad_token_id,
                                       cfg.packing, cfg.eval_answers, ranks=self.ranks, device=self.device,
                                       autocast_dtype=self.autocast, workers=self.workers)

        def evaluate(state: loop.State) -> None:
            row, answers = validator(model, state.step)
            if self.ranks.main:
                logger.log(row)
                logger.log_answers(answers)
                tqdm.write(validate.line(row, logger.rows))
            self.ranks.barrier()

        return evaluate

    def _load(self, resume_from: Path | None) -> None:
        """The base, the model with what trains opened, its processor and template, and the dataset."""
        cfg = self.cfg
        if loadlib.is_adapter(self.base):
            raise LlavatuneError(f"{self.base} is an adapter checkpoint; merge it first (llavatune merge) and "
                                 "train on the merged model.")
        self.model, self.processor = self._model(resume_from)
        self.template = get_template(cfg.template or ("plain" if cfg.stage == "pretrain" else template_name(self.base)))
        if cfg.stage == "finetune":  # saved processors prompt in the template the model is tuned on
            self.processor.chat_template = to_jinja(self.template, self.processor.tokenizer)
        self.dataset, self.eval_dataset = (
            SupervisedDataset(path, cfg.images, self.processor, self.template, self.model.config.image_token_id,
                              self.model.config.image_seq_length, cfg.max_length, cfg.on_bad_image, cfg.prompt_suffix)
            if path is not None else None for path in (cfg.data, cfg.eval_data))
        self.data_manifest = {**data_manifest(cfg.data), "rows": len(self.dataset)}  # hashed once per run
        if self.eval_dataset is not None:
            self.data_manifest["eval"] = {**data_manifest(cfg.eval_data), "rows": len(self.eval_dataset)}
            if self.ranks.main and (warning := validate.shared_images(self.eval_dataset.records, self.dataset.records)):
                console.print(warning)

    def _start_logging(self, steps: int, state: loop.State):
        """Rank 0 writes run_config.yaml and trainable.txt and gets the metrics logger; the others a silent one."""
        if self.ranks.main:
            self._describe(steps)
        self.ranks.barrier()
        if not self.ranks.main:
            return _Silent()
        logger = RunLogger(self.out, self.cfg.report_to, to_dict(self.cfg), resume_step=state.step)
        for note in logger.notes:
            console.print(note)
        return logger

    def _say(self, text: str) -> None:
        if self.ranks.main:
            console.print(text)

    def _resume_folder(self) -> Path | None:
        cfg = self.cfg
        if cfg.resume is None:
            if self.ranks.main and (checkpoint.checkpoints(self.out) or (self.out / "final").exists()):
                raise LlavatuneError(f"{self.out} already holds a run; continue it with resume=auto, or choose "
                                     "another out.")
            return None
        folder = checkpoint.latest(self.out) if cfg.resume == "auto" else Path(cfg.resume)
        if folder is None:
            self._say(f"resume=auto: no complete checkpoint in {self.out}; starting from step 0")
            return None
        if not checkpoint.is_complete(folder):
            raise LlavatuneError(f"{folder}: not a complete checkpoint (checkpoint.json missing or files differ).")
        return folder

    def _model(self, resume_from: Path | None):
        cfg = self.cfg
        full_weights = cfg.method not in ("lora", "qlora") or cfg.stage == "pretrain"
        source = resume_from if (resume_from is not None and full_weights) else self.base
        if cfg.method == "qlora" and self.ranks.places_weights:
            raise LlavatuneError(f"method=qlora keeps the 4-bit LLM whole on every card; strategy={cfg.strategy} "
                                 "would shard it: use strategy=ddp or zero2 (a 7B LLM in 4-bit is ~4 GB).")
        # FSDP and ZeRO-3 place the weights shard by shard when they wrap the model: until then it stays on the CPU,
        # and only on rank 0, the others get their shards from it. Not under vision_cache: every rank runs the tower
        # to fill the cache before the model is wrapped.
        place = "cpu" if self.ranks.places_weights else self.device
        empty = self.ranks.receives_weights and not cfg.vision_cache
        model, processor = loadlib.load_base(source, self.dtype, load_4bit=cfg.method == "qlora",
                                             device="meta" if empty else str(place))
        fast.configure(model, cfg.attention, cfg.kernels, self.device, cfg.packing)
        if cfg.method == "qlora":
            from peft import prepare_model_for_kbit_training
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        model = trainable.apply(model, cfg.stage, cfg.method, cfg.lora, cfg.train_vision, cfg.trainable_layers)
        if self.dtype != torch.float32 and cfg.method != "full":
            for p in model.parameters():  # small trained parts keep fp32 master weights
                if p.requires_grad:
                    p.data = p.data.float()
        if resume_from is not None and not full_weights and not empty:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(resume_from / "adapter_model.safetensors"))
        if cfg.gradient_checkpointing:
            fast.checkpoint_layers(model, cfg.checkpoint_layers)
        if not empty:
            model = model.to(place)
        if cfg.compile:
            fast.compile_layers(model)
        return model, processor

    def _vision_cache(self) -> None:
        """vision_cache=true: every image's features, training and held-out, computed once (shared out over the
        ranks), then read."""
        from llavatune.data import features

        tower = trainable.unwrap(self.model).model.vision_tower
        if any(p.requires_grad for p in tower.parameters()):
            raise LlavatuneError("vision_cache=true needs a frozen vision tower; drop train_vision / lora.vision, "
                                 "or the cache.")
        if self.ranks.sharded:
            raise LlavatuneError("vision_cache=true runs the projector outside the sharded forward: use ddp or a "
                                 "zero strategy with it.")
        folder = self.out / "vision_cache"
        if self.ranks.main:
            features.check(self.model, self.processor, folder)
        self.ranks.barrier()
        home = next(tower.parameters()).device  # the CPU under ZeRO-3, which places the weights later
        tower.to(self.device)
        datasets = [d for d in (self.dataset, self.eval_dataset) if d is not None]
        made = sum(features.prepare(self.model, self.processor, d, folder, self.device, self.autocast,
                                    self.ranks.rank, self.ranks.world, self.workers) for d in datasets)
        tower.to(home)
        self.ranks.barrier()
        self._say(f"vision features: {folder} ({made} computed on rank 0)")
        for d in datasets:
            d.features = folder

    def _fit_checkpointing(self, lengths: list[int], batches: list[list[int]]) -> None:
        """checkpoint_layers=auto on one GPU: probe the largest micro-batch of the first epoch (by the dataset's
        length estimates) and keep the layers the budget does not fit checkpointed."""
        cfg = self.cfg
        if self.device.type != "cuda" or self.ranks.world > 1 or self.ranks.places_weights:
            raise LlavatuneError("checkpoint_layers=auto measures memory on one CUDA GPU holding the whole model "
                                 "(not under FSDP or ZeRO-3); give a number of layers instead (the value a one-GPU "
                                 "run prints), or leave it unset to checkpoint all.")

        def size(batch: list[int]) -> int:
            sizes = [abs(lengths[i]) for i in batch]
            return sum(sizes) if cfg.packing else len(batch) * max(sizes)

        largest = max(batches, key=size)
        data = self.dataset  # the probe is not part of the run: its drops are not counted
        counts = data.skipped.copy(), dict(data.first_dropped), data.served
        batch = collate([data[i] for i in largest], self.processor.tokenizer.pad_token_id, cfg.packing)
        data.skipped, data.first_dropped, data.served = counts
        if batch is None:
            raise LlavatuneError("checkpoint_layers=auto: every sample of the largest micro-batch was dropped; "
                                 "run `llavatune data validate`.")
        k = loop.fit_checkpointing(self.model, batch, cfg.memory_budget_gib, self.device, self.autocast)
        n = len(fast.decoder_layers(self.model))
        self._say(f"checkpoint_layers=auto: {k} of {n} LLM layers checkpointed (largest micro-batch "
                  f"{n_tokens(batch)} tokens; pass checkpoint_layers={k} to skip this probe next time)")

    def run_doc(self) -> dict:
        # the template the checkpoint answers in: stage 1 (plain captions) leaves the base's chat template
        template = self.template.name if self.cfg.stage == "finetune" else template_name(self.base)
        # a hub id is recorded as such, with the commit trained on: the run's adapter finds it on any machine
        base = ({"base": str(self.cfg.model), "base_revision": hub.revision_of(self.base)}
                if hub.is_hub_id(self.cfg.model) else {"base": str(self.base.resolve())})
        return {"model": {**base, "template": template, "train_template": self.template.name,
                          "image_tokens": self.model.config.image_seq_length},
                "data": self.data_manifest}

    def _describe(self, steps: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        report = trainable.report(self.model)
        names = sorted(trainable.trainable_names(self.model))
        (self.out / "trainable.txt").write_text(report + "\n\n" + "\n".join(names) + "\n")
        cfg = self.cfg
        global_batch = cfg.batch_size * cfg.grad_accum * self.ranks.world
        save_run_config(self.out, "train", cfg, **self.run_doc(), plan={
            "steps": steps, "global_batch": global_batch, "devices": self.ranks.world})
        console.print(f"{trainable.describe(cfg.stage, cfg.method)}, template {self.template.name}, "
                      f"{len(self.dataset):,} samples, {steps} steps; global batch {global_batch} = "
                      f"{cfg.batch_size} per device x {self.ranks.world} device(s) x {cfg.grad_accum} accumulation; "
                      f"device {self.device}\n{report}")

    def _save(self, folder: Path, step: int, trainer_state: dict, weights: dict | None) -> None:
        """`weights`: the gathered state dict under FSDP, None when the model is whole here."""
        def payload(tmp: Path) -> None:
            save_model(self.model, self.processor, tmp, **({"state_dict": weights} if weights is not None else {}))
            (tmp / "trainable.txt").write_text((self.out / "trainable.txt").read_text())
            save_run_config(tmp, "train", self.cfg, **self.run_doc(), checkpoint={"step": step})

        checkpoint.save(folder, step, payload, trainer_state)

    def _restore(self, folder: Path, model, optimizer, scheduler) -> loop.State:
        """The checkpoint's weights (loaded with the model), optimizer, RNG and data position; the learning rates
        of this config at the checkpoint's step. Settings that differ from the checkpoint's are listed."""
        saved = checkpoint.load_state(folder)
        base_lrs = list(scheduler.base_lrs)  # this config's, before the checkpoint's replace them
        self.ranks.load_optimizer_state(model, optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        continue_schedule(scheduler, base_lrs)
        loop.set_rng_state(saved["rng"])
        state = loop.State(**saved["loop"])
        self._say(f"resuming from {folder} at step {state.step}")
        saved_run = read_run_config(folder) or {}
        changed = changed_settings(saved_run.get("config") or {}, to_dict(self.cfg))
        if changed:
            self._say(f"settings changed since that checkpoint: {changed}; the run goes on with them.")
        then, now = saved_run.get("data") or {}, self.data_manifest
        if then.get("sha256") not in (None, now["sha256"]):
            self._say(f"[yellow]the data changed since that checkpoint[/] ({then.get('rows', '?')} rows then, "
                      f"{now['rows']} now): the run goes on through the new data from the same position in the order, "
                      "which no longer holds the same samples; the samples seen differ from an uninterrupted run.")
        return state


def _check_paths(cfg: TrainConfig) -> Path:
    """The model, the data files and the image folder exist: a typo found before a model of many GB is loaded,
    not after (a wrong images= would otherwise drop every sample). The model last (a hub id downloads here):
    returns its folder."""
    for key in ("data", "eval_data"):
        path = getattr(cfg, key)
        if path is not None and not formats.exists(path):  # hub data is downloaded here
            raise LlavatuneError(f"{key}={path}: " + ("no file matches." if hub.is_pattern(path) else
                                                      "no such file or folder."))
    for path in (cfg.data, cfg.eval_data):
        if path is not None:
            imagelib.check_findable(path, cfg.images)
    return loadlib.resolve(cfg.model)  # "no such model, run or checkpoint folder"


def changed_settings(saved: dict, now: dict) -> str:
    """'key old -> new, ...' for the settings of a run that changed on resume (not those that only say where
    it logs, saves or what it evaluates); '' when none did."""
    bookkeeping = {"resume", "dry_run", "out", "report_to", "log_every", "save_every", "keep_last", "data_workers",
                   "eval_data", "eval_every", "eval_answers"}
    return ", ".join(f"{k} {saved[k]} -> {v}" for k, v in now.items()
                     if k in saved and saved[k] != v and k not in bookkeeping)


class _Silent:
    """The logger of ranks other than 0."""
    notes: list[str] = []

    def log(self, row: dict) -> None:
        pass

    def plot(self, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


