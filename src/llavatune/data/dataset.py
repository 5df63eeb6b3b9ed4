"""Records -> tokenized samples -> padded batches, and LLaVA's modality-length grouped order.

A sample is tokenized when it is drawn (cheap next to the forward pass). A sample whose image is missing or
corrupt is skipped and counted (`on_bad_image: skip`) or stops the run with its file and row (`stop`);
samples the tokenizer drops (image tokens do not fit, nothing supervised) are counted the same way. The first
sample dropped for each reason is kept with its file:row, for the run to name it (`first_dropped`).
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from llavatune.data import features
from llavatune.data import images as imagelib
from llavatune.data.formats import DataError, Record, read_records, with_suffix
from llavatune.data.tokenize import IGNORE_INDEX, Dropped, tokenize_turns
from llavatune.errors import LlavatuneError


@dataclasses.dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None   # (n_images, 3, H, W)
    image_features: torch.Tensor | None = None  # (n_images, image tokens, vision hidden), from a vision cache


class Packed:
    """Records pickled end to end into one byte array, with their offsets. On a 665K-row LLaVA-style file the
    Python objects took 2.4 GB and this takes 0.5 GB; and forked DataLoader workers read it without touching
    reference counts, so they share its pages instead of copying them one by one as they read."""

    def __init__(self, records: Iterable[Record]):
        blobs = [pickle.dumps(dataclasses.replace(r, raw=None), protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self.offsets = np.cumsum([0, *map(len, blobs)])                       # (n + 1,)
        self.buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)          # (total bytes,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        return pickle.loads(self.buffer[self.offsets[i]:self.offsets[i + 1]])

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))


class SupervisedDataset(torch.utils.data.Dataset):
    """Holds the records (text only, packed: see Packed); images are opened and tokens made per item."""

    def __init__(self, path: Path, image_dir: Path | None, processor, template, image_token_id: int,
                 image_seq_length: int, max_length: int, on_bad_image: str = "skip", prompt_suffix: str = ""):
        self.image_seq_length = image_seq_length
        estimates: list[int] = []

        def measured(records: Iterable[Record]) -> Iterator[Record]:  # estimated while packed, not unpickled again
            for record in records:
                record = with_suffix(record, prompt_suffix)
                estimates.append(self._estimate(record))
                yield record

        self.records = Packed(measured(read_records(path)))
        self.lengths = np.asarray(estimates, dtype=np.int64)  # (n,): see length()
        if not self.records:
            raise LlavatuneError(f"{path}: no samples.")
        self.image_dir, self.processor, self.template = image_dir, processor, template
        self.image_token_id, self.max_length = image_token_id, max_length
        self.on_bad_image = on_bad_image
        self.skipped: collections.Counter = collections.Counter()
        self.first_dropped: dict[str, str] = {}  # reason -> "file:row: what is wrong", its first sample
        self.served = 0  # samples returned so far (to tell "some were dropped" from "none is usable")
        self.features: Path | None = None  # a vision cache (data/features.py): read instead of the images

    def __len__(self) -> int:
        return len(self.records)

    def length(self, i: int) -> int:
        """A cheap length estimate for grouping: words plus image tokens; negative for text-only (LLaVA)."""
        return int(self.lengths[i])

    def _estimate(self, record: Record) -> int:
        words = sum(len(text.split()) for _, text in record.turns)
        return words + len(record.images) * self.image_seq_length if record.images else -words

    def __getitem__(self, i: int) -> Encoded | None:
        record = self.records[i]
        out = tokenize_turns(record.turns, self.template, self.processor.tokenizer, self.image_token_id,
                             self.image_seq_length, self.max_length)
        if isinstance(out, Dropped):
            return self._drop(out.reason, f"{record.source}: {out.detail}")
        if out.n_images != len(record.images):
            return self._bad(f"{record.source}: {out.n_images} <image> tag(s) but {len(record.images)} image(s)")
        pixel_values = cached = None
        try:
            if record.images and self.features is not None:  # a vision cache: features instead of pixels
                cached = torch.stack([features.load(self.features, ref, record.source) for ref in record.images])
            elif record.images:
                pil = [imagelib.load(ref, self.image_dir, record.source) for ref in record.images]
                pixel_values = imagelib.pixels(pil, self.processor.image_processor)
        except DataError as err:
            return self._bad(str(err))
        self.served += 1
        return Encoded(out.input_ids, out.labels, pixel_values, cached)

    def dropped(self) -> str:
        """'10 of 34 samples drawn were dropped (bad image: 10)', counted in this process since it started."""
        n = sum(self.skipped.values())
        reasons = ", ".join(f"{reason}: {k}" for reason, k in self.skipped.items())
        return f"{n:,} of {n + self.served:,} samples drawn were dropped ({reasons})"

    def _bad(self, message: str) -> None:
        """`message` names the sample's file:row."""
        if self.on_bad_image == "stop":
            raise LlavatuneError(f"{message} (set on_bad_image=skip to skip such samples, and run "
                                 "`llavatune data validate` to list them all)")
        return self._drop("bad image", message)

    def _drop(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_dropped.setdefault(reason, where)
        return None


def collate(items: list[Encoded | None], pad_id: int, pack: bool = False) -> dict[str, torch.Tensor] | None:
    """Right-pad to the longest sample (pad positions get attention 0 and label -100), or with `pack` put the
    samples end to end in one row with no padding at all."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    if pack:
        return _packed(items)
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        ids[row, :n] = torch.tensor(it.input_ids)
        labels[row, :n] = torch.tensor(it.labels)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    _add_images(batch, items)
    return batch


def _packed(items: list[Encoded]) -> dict[str, torch.Tensor]:
    """One row (1, sum of lengths): position ids restart at 0 for every sample and no attention mask is passed,
    which transformers reads as packed sequences (each sample attends only to itself, for eager, SDPA, flex and
    flash attention alike). A sample's first token is never a target, so no loss crosses a boundary."""
    ids = torch.cat([torch.tensor(it.input_ids) for it in items])[None]
    labels = []
    for it in items:
        lab = torch.tensor(it.labels)
        lab[0] = IGNORE_INDEX
        labels.append(lab)
    positions = torch.cat([torch.arange(len(it.input_ids)) for it in items])[None]
    batch = {"input_ids": ids, "labels": torch.cat(labels)[None], "position_ids": positions}
    _add_images(batch, items)
    return batch


def _add_images(batch: dict, items: list[Encoded]) -> None:
    """Pixels (n_images, 3, H, W), or cached features (n_images, tokens, hidden), in sample order."""
    pixels = [it.pixel_values for it in items if it.pixel_values is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    cached = [it.image_features for it in items if it.image_features is not None]
    if cached:
        batch["image_features"] = torch.cat(cached)


def n_samples(batch: dict) -> int:
    """Samples in a padded or packed micro-batch."""
    if "position_ids" in batch:
        return int((batch["position_ids"] == 0).sum())
    return len(batch["input_ids"])


def n_targets(batch: dict) -> int:
    """Tokens with a target (each position t predicts labels[t + 1]): the divisor of the token-mean loss."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def n_tokens(batch: dict) -> int:
    """Real (non-pad) tokens in a padded or packed micro-batch."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


def batch_order(lengths: list[int], batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """Index batches for one epoch, a pure function of (lengths, batch_size, seed) so resume can replay it.

    group_by_length (LLaVA's modality-length grouping): image and text-only samples never share a batch;
    within megabatches of 50 batches, samples are sorted by length so padding stays small; batch order is
    shuffled."""
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    if not group_by_length:
        rng.shuffle(indices)
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    batches = []
    for group in ([i for i in indices if lengths[i] > 0], [i for i in indices if lengths[i] <= 0]):
        rng.shuffle(group)
        mega = batch_size * 50
        for start in range(0, len(group), mega):
            chunk = sorted(group[start:start + mega], key=lambda i: -abs(lengths[i]))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
