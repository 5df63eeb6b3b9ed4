"""Held-out evaluation during training (`eval_data`): before the first step, every `eval_every` steps and at the
end, the loss on every held-out sample and, with `eval_answers: N`, greedy answers to the first N questions
with their exact match, so over- or under-fitting shows while the run goes (eval loss next to train loss in
loss.png, answers in eval_answers.jsonl).

The loss is the training loss (assistant tokens, same template and batches) with dropout off and no
gradients. Each rank takes its share of the batches and the sums meet; a sharded model (FSDP, ZeRO-3) needs
every rank in every forward, so a rank short of batches runs a spare one and discards it, and all ranks
generate together (`synced_gpus`). The RNG states are restored afterwards: a run trains the same with or
without evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterable

import torch
from torch.nn.parallel import DistributedDataParallel

from llavatune.data import images as imagelib
from llavatune.data.dataset import SupervisedDataset, collate, n_samples, n_targets
from llavatune.data.formats import DataError, Record
from llavatune.data.loader import in_workers
from llavatune.errors import LlavatuneError
from llavatune.inference.generate import GenerationConfig, answers, encode
from llavatune.metrics import exact_match
from llavatune.training import loop
from llavatune.training.distributed import Ranks


def shared_images(held_out: Iterable[Record], train: Iterable[Record]) -> str | None:
    """A warning when held-out rows show images that the training data has too: their loss and answers then say
    how well the run remembers those images, not how it does on new ones. None when they share none."""
    held_out = list(held_out)
    rows = imagelib.shared(held_out, train)
    if not rows:
        return None
    return (f"warning: eval_data: {len(rows)} of {len(held_out)} held-out rows show images that the training data has "
            f"too (the first: {', '.join(rows[0])}); their loss and answers measure memory more than new images. "
            "`llavatune data split` keeps the rows of an image on one side.")


@dataclasses.dataclass
class Question:
    id: str
    text: str                       # the last user turn
    inputs: dict                    # the prompt (every turn before the reference) and images, encoded once
    reference: str
    max_new_tokens: int             # the reference's length and some: room to be right, not to ramble


class Validator:
    def __init__(self, dataset: SupervisedDataset, batch_size: int, pad_id: int, packing: bool, n_answers: int,
                 ranks: Ranks, device: torch.device, autocast_dtype: torch.dtype | None, workers: int = 0):
        self.dataset, self.pad_id, self.packing, self.ranks = dataset, pad_id, packing, ranks
        self.device, self.autocast_dtype, self.workers = device, autocast_dtype, workers
        longest_first = sorted(range(len(dataset)), key=lambda i: -abs(dataset.length(i)))  # little padding
        self.batches = [longest_first[i:i + batch_size] for i in range(0, len(longest_first), batch_size)]
        self.spare = next((b for b in map(self._collate, self.batches) if b is not None), None)
        if self.spare is None:
            raise LlavatuneError(f"eval_data: none of its {len(dataset)} samples is usable "
                                 f"({dict(dataset.skipped)}); run `llavatune data validate` on it.")
        self.questions = self._questions(n_answers)

    def _collate(self, indices: list[int]) -> dict | None:
        return collate([self.dataset[i] for i in indices], self.pad_id, self.packing)

    def _questions(self, n: int) -> list[Question]:
        """The first n samples that end with an answer, encoded once, here (a bad image is passed over, or
        stops the run with on_bad_image=stop, as in the loss)."""
        processor, template = self.dataset.processor, self.dataset.template
        out = []
        for record in self.dataset.records:
            if len(out) == n:
                break
            if not record.turns or record.turns[-1][0] != "assistant":
                continue
            try:
                pil = [imagelib.load(ref, self.dataset.image_dir, record.source) for ref in record.images]
            except DataError as err:
                if self.dataset.on_bad_image == "stop":
                    raise LlavatuneError(f"eval_data: {err}") from None
                continue
            turns, reference = record.turns[:-1], record.turns[-1][1]
            length = len(processor.tokenizer(reference, add_special_tokens=False)["input_ids"])
            out.append(Question(record.id, turns[-1][1], encode(processor, template, [turns], [pil]), reference,
                                length + 16))
        return out

    def __call__(self, model, step: int) -> tuple[dict, list[dict]]:
        """(a metrics row, this rank's answer rows: rank 0's are the ones to keep)."""
        started = time.perf_counter()
        saved = loop.rng_state()
        model.eval()
        try:
            with torch.no_grad():
                loss, tokens, samples = self._loss(model)
                answers = self._answers(model) if self.questions else []
        finally:
            model.train()
            loop.set_rng_state(saved)
        row = {"step": step, "eval_loss": round(loss, 6), "eval_samples": samples, "eval_tokens": tokens}
        if answers:
            row["eval_exact_match"] = round(sum(a["exact_match"] for a in answers) / len(answers), 4)
            row["eval_answered"] = len(answers)
        row["eval_s"] = round(time.perf_counter() - started, 3)
        return row, [{"step": step, **a} for a in answers]

    def _loss(self, model) -> tuple[float, int, int]:
        """Mean token loss over every supervised token of the held-out set, on all ranks together."""
        world, rank = self.ranks.world, self.ranks.rank
        rounds = -(-len(self.batches) // world)  # every rank runs as many forwards
        mine = in_workers(_Collated(self), self.workers, sampler=range(rank, len(self.batches), world),
                          pin_memory=self.device.type == "cuda")  # this rank's batches, made `workers` ahead
        total = targets = samples = 0.0
        for _ in range(rounds):
            batch = next(mine, None)  # None: all its samples dropped, or past this rank's share
            counted = batch is not None
            batch = batch if counted else self.spare
            summed = loop.micro_loss(model, batch, 1.0, self.device, self.autocast_dtype)  # summed token loss
            if counted:
                total += summed.item()
                targets += n_targets(batch)
                samples += n_samples(batch)
        total, targets, samples = (self.ranks.sum(v, self.device) for v in (total, targets, samples))
        return total / max(targets, 1.0), int(targets), int(samples)

    def _answers(self, model) -> list[dict]:
        """Greedy answers in the training template; rank 0 alone unless the weights are sharded."""
        processor, template = self.dataset.processor, self.dataset.template
        together = self.ranks.world > 1 and self.ranks.places_weights
        if not (self.ranks.main or together):
            return []
        inner = model.module if isinstance(model, DistributedDataParallel) or self.ranks.deepspeed else model
        out = []
        for q in self.questions:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                got = answers(inner, processor, template, q.inputs, GenerationConfig(q.max_new_tokens), self.device,
                              **({"synced_gpus": True} if together else {}))[0]
            out.append({"id": q.id, "question": q.text, "reference": q.reference, "answer": got.text,
                        "exact_match": exact_match(got.text, q.reference), "finish_reason": got.finish_reason})
        return out


class _Collated(torch.utils.data.Dataset):
    """Held-out batch k collated (None when every sample in it was dropped), for worker processes."""

    def __init__(self, validator: Validator):
        self.validator = validator

    def __len__(self) -> int:
        return len(self.validator.batches)

    def __getitem__(self, k: int) -> dict | None:
        return self.validator._collate(self.validator.batches[k])


def line(row: dict, rows: list[dict]) -> str:
    """One terminal line per evaluation, with the latest train loss beside the held-out one. The loss is over
    every held-out sample, the exact match over the first `eval_answers` only: each line says how many."""
    train = [r["loss"] for r in rows if "loss" in r and r["step"] <= row["step"]]
    text = f"eval at step {row['step']}: loss {row['eval_loss']:.4f} on {row['eval_samples']} samples"
    text += f" (train {train[-1]:.4f})" if train else " (before training)"
    if "eval_exact_match" in row:
        text += f", exact match {row['eval_exact_match']:.3f} on {row['eval_answered']} answered"
    return text + f", {row['eval_s']:.1f} s"


def _lowest(rows: list[dict]) -> dict | None:
    """The row of the lowest held-out loss so far, None without any."""
    return min((r for r in rows if "eval_loss" in r), key=lambda r: r["eval_loss"], default=None)


def lowest_step(rows: list[dict]) -> int | None:
    """The step of the lowest held-out loss so far (its checkpoint is kept from pruning), None without any."""
    best = _lowest(rows)
    return best["step"] if best is not None else None


def summary(rows: list[dict], run_dir: Path, final_step: int) -> str:
    """First and last held-out loss, and the lowest with its step and the checkpoint that holds it."""
    evals = [r for r in rows if "eval_loss" in r]
    if not evals:
        return "eval: no evaluation ran"
    first, last, best = evals[0], evals[-1], _lowest(evals)
    text = (f"eval loss {first['eval_loss']:.4f} (step {first['step']}) -> {last['eval_loss']:.4f} "
            f"(step {last['step']}); lowest {best['eval_loss']:.4f} at step {best['step']}")
    folder = run_dir / ("final" if best["step"] == final_step else f"checkpoint-{best['step']}")
    if best["step"] == 0:
        text += " (before training)"
    elif folder.is_dir():
        text += f" ({folder})"
    if "eval_exact_match" in last:
        text += f"; exact match {first.get('eval_exact_match', 0):.3f} -> {last['eval_exact_match']:.3f}"
        text += f" on {last['eval_answered']} answered" if "eval_answered" in last else ""
    return text
