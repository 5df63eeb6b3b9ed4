"""The one training loop, for every stage and method.

An optimizer step consumes `grad_accum` micro-batches. The loss of each micro-batch is its summed token loss
divided by the supervised-token count of the whole accumulation window (`num_items_in_batch`), so accumulating
k micro-batches equals one batch k times larger. A non-finite loss or gradient norm skips the update (the
weights are never touched) and stops the run after `nan_patience` in a row. The data order of an epoch is a
pure function of the seed, so the position (epoch, micro-batch) plus the RNG states resume a run exactly.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from llavatune.data.dataset import collate
from llavatune.data.tokenize import IGNORE_INDEX
from llavatune.errors import LlavatuneError

OOM_HELP = ("out of memory. Knobs, most effective first: batch_size (keep the global batch with grad_accum), "
            "gradient_checkpointing=true, method=qlora (4-bit LLM), max_length, precision=bf16.")


@dataclasses.dataclass
class Plan:
    steps: int
    grad_accum: int
    max_grad_norm: float
    save_every: int
    log_every: int
    nan_patience: int


@dataclasses.dataclass
class State:
    step: int = 0
    epoch: int = 0
    index: int = 0              # next micro-batch of the epoch's order
    samples: int = 0
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def draw_window(dataset, order: Callable[[int], list[list[int]]], state: State, n: int, pad_id: int) -> list[dict]:
    """The next `n` non-empty micro-batches, advancing (epoch, index) through the per-epoch orders."""
    window = []
    batches = order(state.epoch)
    while len(window) < n:
        if state.index >= len(batches):
            state.epoch, state.index = state.epoch + 1, 0
            batches = order(state.epoch)
        batch = collate([dataset[i] for i in batches[state.index]], pad_id)
        state.index += 1
        if batch is not None:
            window.append(batch)
    return window


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)


def train(model, dataset, order, optimizer, scheduler, plan: Plan, state: State, *, device: torch.device,
          autocast_dtype: torch.dtype | None, pad_id: int, logger, save: Callable[[State], None],
          scaler=None) -> State:
    """Run until `plan.steps` optimizer steps; `save(state)` is called every `save_every` steps and on Ctrl-C."""
    model.train()
    bar = tqdm(total=plan.steps, initial=state.step, desc="train", dynamic_ncols=True)
    committed = dataclasses.replace(state)  # the state after the last finished update
    try:
        while state.step < plan.steps:
            committed = dataclasses.replace(state)
            started = time.perf_counter()
            window = draw_window(dataset, order, state, plan.grad_accum, pad_id)
            lr = scheduler.get_last_lr()[0]  # the rate this update uses
            loss, grad_norm = _update(model, window, optimizer, plan, device, autocast_dtype, scaler)
            scheduler.step()
            state.step += 1
            state.samples += sum(len(b["input_ids"]) for b in window)
            if loss is None:
                _skip(state, plan, grad_norm)
            else:
                state.nonfinite_in_a_row = 0
            row = _metrics(state, loss, grad_norm, lr, window, started, device, dataset)
            bar.set_postfix({k: row[k] for k in ("loss", "lr", "samples_per_s", "tokens_per_s", "mem_gib") if k in row},
                            refresh=False)
            bar.update(1)
            if state.step % plan.log_every == 0 or state.step == plan.steps:
                logger.log(row)
            if plan.save_every and state.step % plan.save_every == 0 and state.step < plan.steps:
                save(state)
    except KeyboardInterrupt:
        bar.close()
        save(committed)
        raise LlavatuneError(f"interrupted after step {committed.step}; a checkpoint was saved. "
                             "Continue with resume=auto.") from None
    except torch.OutOfMemoryError:
        raise LlavatuneError(f"step {state.step + 1}: {OOM_HELP}") from None
    bar.close()
    return state


def _update(model, window, optimizer, plan: Plan, device, autocast_dtype, scaler) -> tuple[float | None, float]:
    """One optimizer step over the window. Returns (mean token loss, grad norm); loss None when skipped."""
    n_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window)
    total = 0.0
    for batch in window:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(**batch, num_items_in_batch=torch.tensor(n_items, device=device)).loss
        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            return None, float("nan")
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.item()
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, plan.max_grad_norm if plan.max_grad_norm > 0 else float("inf"))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.update()
        return None, float(norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, float(norm)


def _skip(state: State, plan: Plan, grad_norm: float) -> None:
    state.skipped_steps += 1
    state.nonfinite_in_a_row += 1
    tqdm.write(f"warning: step {state.step}: non-finite loss or gradient (norm {grad_norm}); update skipped, "
               f"weights unchanged ({state.nonfinite_in_a_row} in a row, limit {plan.nan_patience})")
    if state.nonfinite_in_a_row >= plan.nan_patience:
        raise LlavatuneError(f"{state.nonfinite_in_a_row} non-finite steps in a row at step {state.step}; stopping "
                             "before the weights are harmed. Lower lr, use precision=bf16 instead of fp16, or "
                             "check the data (llavatune data validate).")


def _metrics(state: State, loss, grad_norm, lr: float, window, started, device, dataset) -> dict:
    seconds = max(time.perf_counter() - started, 1e-9)
    tokens = sum(int(b["attention_mask"].sum()) for b in window)
    samples = sum(len(b["input_ids"]) for b in window)
    row = {"step": state.step, "epoch": state.epoch, "lr": lr,
           "grad_norm": round(grad_norm, 6), "samples_per_s": round(samples / seconds, 3),
           "tokens_per_s": round(tokens / seconds, 1), "mem_gib": round(memory_gib(device), 3),
           "skipped_steps": state.skipped_steps, "dropped_samples": sum(dataset.skipped.values())}
    if loss is not None:
        row["loss"] = loss
    return row
