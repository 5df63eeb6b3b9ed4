"""The one training loop, for every stage and method.

An optimizer step consumes `grad_accum` micro-batches. The loss of each micro-batch is its summed token loss
divided by the supervised-token count of the whole accumulation window (`num_items_in_batch`), so accumulating
k micro-batches equals one batch k times larger. A non-finite loss or gradient norm skips the update (the
weights are never touched) and stops the run after `nan_patience` in a row. The data order of an epoch is a
pure function of the seed, so the position (epoch, micro-batch) plus the RNG states resume a run exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import resource
import time
import warnings
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from llavatune.data.dataset import n_samples, n_targets, n_tokens
from llavatune.data.loader import Batches, Order, advance
from llavatune.errors import LlavatuneError
from llavatune.training.distributed import Ranks
from llavatune.training.logging import Progress
from llavatune.training import fast

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
    packing: bool = False
    data_workers: int = 0       # processes making the next micro-batches while this one computes
    eval_every: int = 0         # steps between held-out evaluations (0: at the start and the end only)


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


def draw_window(batches: Batches, order: Order, state: State, n: int, ranks: Ranks, device) -> list[dict]:
    """This rank's micro-batches of the next optimizer step. A step spans n x world micro-batches of the
    epoch order (crossing into the next epoch as needed); rank r takes positions r, r + world, ... The
    position advances the same way on every rank, so a run resumes at the same place on any world size.

    A micro-batch whose samples were all dropped is None. Every rank must run as many micro-batches, or their
    collectives pair up wrongly (gloo aborts, NCCL hangs): a position that is None on any rank is passed over
    on all, and the samples passed over elsewhere are counted as dropped too."""
    drawn = list(itertools.islice(batches, n))
    state.epoch, state.index = advance(order, state.epoch, state.index, n * ranks.world)
    dataset = batches.dataset
    usable = ranks.all_true_each([batch is not None for batch in drawn], device)
    for batch in (b for b, ok in zip(drawn, usable) if b is not None and not ok):
        dataset.served -= n_samples(batch)
        dataset.skipped["passed over with another rank's dropped micro-batch"] += n_samples(batch)
    _stop_if_nothing_usable(dataset, ranks, device, ended=False)
    return [b for b, ok in zip(drawn, usable) if ok]


def _stop_if_nothing_usable(dataset, ranks: Ranks, device, ended: bool) -> None:
    """No sample served yet, on any rank, after 64 dropped (or all of a smaller dataset, or at the end of the
    run): the data or images= is wrong, and training on would save weights that learned nothing."""
    dropped = sum(dataset.skipped.values())
    hopeless = dataset.served == 0 and dropped > 0 and (ended or dropped >= min(len(dataset), 64))
    if not ranks.all_true(not hopeless, device):
        first = next(iter(dataset.first_dropped.values()), "").rstrip(".")
        raise LlavatuneError(f"no usable training sample: {dataset.dropped()}; the first: {first}. Run "
                             "`llavatune data validate` on the data with --images and --model.")


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)


def train(model, dataset, order, optimizer, scheduler, plan: Plan, state: State, *, device: torch.device,
          autocast_dtype: torch.dtype | None, pad_id: int, logger, save: Callable[[State], None],
          scaler=None, ranks: Ranks | None = None, evaluate: Callable[[State], None] | None = None) -> State:
    """Run until `plan.steps` optimizer steps; `save(state)` is called every `save_every` steps and on Ctrl-C,
    `evaluate(state)` (held-out data, when given) before the first step and every `eval_every` steps."""
    ranks = ranks or Ranks()
    model.train()
    progress = Progress(plan.steps, state.step, ranks.main)
    committed = dataclasses.replace(state)  # the state after the last finished update
    named: set[str] = set()  # reasons for dropping a sample that the terminal has been shown an example of
    batches = Batches(dataset, order, state.epoch, state.index, pad_id, plan.packing, ranks.world, ranks.rank,
                      plan.data_workers, pin_memory=device.type == "cuda")
    try:
        if evaluate and state.step == 0:
            evaluate(state)  # the baseline the run is judged against
        while state.step < plan.steps:
            started = time.perf_counter()
            window = draw_window(batches, order, state, plan.grad_accum, ranks, device)
            waited = time.perf_counter() - started  # the step's wait for its batches: ~0 when workers keep up
            lr = scheduler.get_last_lr()[0]  # the rate this update uses
            if window:
                update = _update_deepspeed if ranks.deepspeed else _update
                loss, grad_norm = update(model, window, optimizer, plan, device, autocast_dtype, scaler, ranks)
            else:  # every sample of the step was dropped, on every rank alike (draw_window)
                loss, grad_norm = None, 0.0
            with warnings.catch_warnings():  # a skipped update still takes its place in the schedule
                if loss is None:  # torch would warn "scheduler before optimizer" when it is step 1; _skip says why
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
                scheduler.step()
            state.step += 1
            _name_dropped(dataset, named, ranks)
            samples = int(ranks.sum(sum(n_samples(b) for b in window), device))
            tokens = int(ranks.sum(sum(n_tokens(b) for b in window), device))
            state.samples += samples
            _count_update(state, plan, bool(window), loss, grad_norm, ranks)
            committed = dataclasses.replace(state)  # the weights now are this state's (Ctrl-C from here saves it)
            row = _metrics(state, loss, grad_norm, lr, samples, tokens, started, waited, device, dataset, ranks)
            _hint_data_workers(row, plan, ranks, device)
            progress.update(row)
            if ranks.main and (state.step % plan.log_every == 0 or state.step == plan.steps):
                logger.log(row)
            if evaluate and ((plan.eval_every and state.step % plan.eval_every == 0) or state.step == plan.steps):
                evaluate(state)
            if plan.save_every and state.step % plan.save_every == 0 and state.step < plan.steps:
                save(state)
        _stop_if_nothing_usable(dataset, ranks, device, ended=True)  # a short run may end before 64 are drawn
    except KeyboardInterrupt:
        progress.close()
        save(committed)
        raise LlavatuneError(f"interrupted after step {committed.step}; a checkpoint was saved. "
                             "Continue with resume=auto.") from None
    except torch.OutOfMemoryError:
        raise LlavatuneError(f"step {state.step + 1}: {OOM_HELP}") from None
    finally:
        batches.close()
    progress.close()
    return state


def _name_dropped(dataset, named: set[str], ranks: Ranks) -> None:
    """The first sample dropped for each reason, once, by its file:row; later ones are only counted."""
    for reason, where in dataset.first_dropped.items():
        if reason not in named and ranks.main:
            tqdm.write(f"warning: sample dropped ({reason}): {where.rstrip('.')}. The next such samples are only "
                       "counted; `llavatune data validate` lists them all.")
        named.add(reason)


def _update(model, window, optimizer, plan: Plan, device, autocast_dtype, scaler,
            ranks: Ranks) -> tuple[float | None, float]:
    """One optimizer step over this rank's micro-batches. Returns (mean token loss over all ranks, grad norm);
    loss None when the step was skipped.

    Each micro-batch's loss is its token-loss sum over the supervised tokens of the whole step on all ranks;
    times `world`, because DDP averages gradients over ranks: the gradient is then that of one big batch."""
    n_items = _supervised_tokens(window, ranks, device)
    total = 0.0
    for k, batch in enumerate(window):
        with ranks.no_sync(model, skip=k < len(window) - 1):
            loss = micro_loss(model, batch, n_items, device, autocast_dtype)
            if not ranks.all_true(bool(torch.isfinite(loss)), device):  # every rank skips together
                optimizer.zero_grad(set_to_none=True)
                return None, float("nan")
            scaled = loss * ranks.world
            (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.item()
    total = ranks.sum(total, device)
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, plan.max_grad_norm if plan.max_grad_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, replicated on every rank
        norm = norm.full_tensor()
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


def _update_deepspeed(engine, window, optimizer, plan: Plan, device, autocast_dtype, scaler,
                      ranks: Ranks) -> tuple[float, float]:
    """One optimizer step through a DeepSpeed engine, with the loss of `_update`: the engine reduces, clips and
    steps at the window's last micro-batch. It cannot drop gradients it has accumulated, so a non-finite loss
    stops the run before that step (the weights stay those of the last checkpoint-able step)."""
    n_items = _supervised_tokens(window, ranks, device)
    total = 0.0
    for k, batch in enumerate(window):
        # the window's last micro-batch is the update, however many were passed over (its own counter would
        # then step in the middle of the next window)
        engine.set_gradient_accumulation_boundary(k == len(window) - 1)
        loss = micro_loss(engine, batch, n_items, device, autocast_dtype)
        if not ranks.all_true(bool(torch.isfinite(loss)), device):
            raise LlavatuneError("non-finite loss under DeepSpeed, which cannot skip an update once gradients are "
                                 "accumulated: stopped before it. Resume from the last checkpoint with a lower lr, "
                                 "or check the data (llavatune data validate).")
        engine.backward(loss * ranks.world, scale_wrt_gas=False)  # ZeRO averages over ranks, as DDP does
        engine.step()                                              # a no-op until the boundary set above
        total += loss.item()
    return ranks.sum(total, device), float(engine.get_global_grad_norm() or 0.0)


def _supervised_tokens(window, ranks: Ranks, device) -> float:
    """Tokens with a target in the whole step, over all ranks: the divisor of every micro-batch's loss."""
    return ranks.sum(sum(n_targets(b) for b in window), device)


def micro_loss(model, batch: dict, n_items, device, autocast_dtype) -> torch.Tensor:
    batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}  # pinned: async
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return fast.targets_loss(model, batch, n_items)


def fit_checkpointing(model, batch: dict, budget_gib: float | None, device, autocast_dtype) -> int:
    """checkpoint_layers=auto: checkpoint as few LLM layers as fit `budget_gib` (default 90% of the GPU), measured
    rather than estimated: `batch` (the run's largest micro-batch) goes forward and backward twice, with every
    layer checkpointed and with all but one; the peaks' difference is one layer's activations. Gradients are
    dropped and the RNG state restored, so the run itself is unchanged. Returns k and leaves it set."""
    layers = len(fast.decoder_layers(model))
    total = torch.cuda.get_device_properties(device).total_memory
    budget = int(budget_gib * 2**30) if budget_gib else int(0.9 * total)
    trained = [p for p in model.parameters() if p.requires_grad]
    reserve = sum(2 * p.numel() * p.element_size() for p in trained)  # AdamW's two moments, not made yet
    saved = rng_state()
    n_items = _supervised_tokens([batch], Ranks(), device)

    def peak(k: int) -> int:
        fast.checkpoint_first(model, k)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        micro_loss(model, batch, n_items, device, autocast_dtype).backward()
        model.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated(device)

    try:
        peak_all = peak(layers)
        peak_one_less = peak(layers - 1) if layers > 1 else peak_all
    except torch.OutOfMemoryError:
        raise LlavatuneError(f"the largest micro-batch ({n_tokens(batch)} tokens) does not fit even with every layer "
                             f"checkpointed: {OOM_HELP}") from None
    finally:
        set_rng_state(saved)
    k = fast.layers_to_checkpoint(layers, peak_all, peak_one_less, budget, reserve)
    fast.checkpoint_first(model, k)
    torch.cuda.reset_peak_memory_stats(device)
    return k


def _count_update(state: State, plan: Plan, had_data: bool, loss: float | None, grad_norm: float,
                  ranks: Ranks) -> None:
    """The step's outcome in the state: an update, a step with no usable sample, or a non-finite one (_skip)."""
    if not had_data:
        state.skipped_steps += 1
        if ranks.main:
            tqdm.write(f"warning: step {state.step}: every sample of this step was dropped; no update")
    elif loss is None:
        _skip(state, plan, grad_norm)
    else:
        state.nonfinite_in_a_row = 0


def _skip(state: State, plan: Plan, grad_norm: float) -> None:
    state.skipped_steps += 1
    state.nonfinite_in_a_row += 1
    tqdm.write(f"warning: step {state.step}: non-finite loss or gradient (norm {grad_norm}); update skipped, "
               f"weights unchanged ({state.nonfinite_in_a_row} in a row, limit {plan.nan_patience})")
    if state.nonfinite_in_a_row >= plan.nan_patience:
        raise LlavatuneError(f"{state.nonfinite_in_a_row} non-finite steps in a row at step {state.step}; stopping "
                             "before the weights are harmed. Lower lr, use precision=bf16 instead of fp16, or "
                             "check the data (llavatune data validate).")


def _hint_data_workers(row: dict, plan: Plan, ranks: Ranks, device) -> None:
    """Once, at step 10 (past the first steps' warm-up): say so when a GPU waited for its data. Not on a CPU,
    where workers take cores from the model (measured: no gain on 2 cores; docs/training.md)."""
    if row["step"] != 10 or not ranks.main or device.type != "cuda":
        return
    share = row["data_wait_s"] / row["step_s"]
    if share > 0.1:
        tqdm.write(f"note: step 10 spent {share:.0%} of its time waiting for data ({row['data_wait_s']:.2f} s, "
                   f"data_workers={plan.data_workers}); more data_workers would prepare batches during the step.")


def _metrics(state: State, loss, grad_norm, lr: float, samples: int, tokens: int, started, waited: float, device,
             dataset, ranks) -> dict:
    """One log row. samples/tokens are totals over the ranks; with several ranks, also per device, and
    mem_gib is the largest peak of any device (each device's in mem_gib_per_device)."""
    seconds = max(time.perf_counter() - started, 1e-9)
    memory = ranks.gather(memory_gib(device), device)
    row = {"step": state.step, "epoch": state.epoch, "lr": lr,
           "grad_norm": round(grad_norm, 6), "samples_per_s": round(samples / seconds, 3),
           "tokens_per_s": round(tokens / seconds, 1), "mem_gib": round(max(memory), 3),
           "data_wait_s": round(waited, 4), "step_s": round(seconds, 4),
           "skipped_steps": state.skipped_steps, "dropped_samples": sum(dataset.skipped.values())}
    if ranks.world > 1:
        row.update({"samples_per_s_per_device": round(samples / seconds / ranks.world, 3),
                    "tokens_per_s_per_device": round(tokens / seconds / ranks.world, 1),
                    "mem_gib_per_device": [round(m, 3) for m in memory]})
    if loss is not None:
        row["loss"] = loss
    return row
