"""This rank's micro-batches in the order the loop uses them, made ahead in worker processes.

The epoch order is a pure function of the seed (`batch_order`), so every micro-batch a run will use, from any
position (epoch, index), is known in advance. Worker processes open, decode and resize the images and tokenize
the text of the next batches while the model computes; the main process gets them in order. Decoding a
COCO-size JPEG and running the image processor takes ~9 ms of one core, so a 16-image micro-batch costs ~150 ms
that would otherwise stall the GPU every step. `workers=0` makes the same batches in the main process.

A worker holds a copy of the dataset: the samples it drops are counted there and sent back with each batch, so
`dataset.skipped`, `dataset.first_dropped` and `dataset.served` in the main process tell exactly of the batches
handed out.
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Callable, Iterator

import torch

from llavatune.data.dataset import collate
from llavatune.errors import LlavatuneError

Order = Callable[[int], list[list[int]]]  # epoch -> that epoch's micro-batches (lists of sample indices)


def positions(order: Order, epoch: int, index: int) -> Iterator[list[int]]:
    """Every micro-batch from position (epoch, index) on, across epochs, forever."""
    while True:
        yield from order(epoch)[index:]
        epoch, index = epoch + 1, 0


def advance(order: Order, epoch: int, index: int, n: int) -> tuple[int, int]:
    """The position n micro-batches after (epoch, index); an epoch's end is (epoch, its length) until the next
    micro-batch is drawn, so a log row says which epoch the step finished."""
    index += n
    while index > len(order(epoch)):
        index -= len(order(epoch))
        epoch += 1
    return epoch, index


def in_workers(jobs: torch.utils.data.Dataset, workers: int, sampler=None, pin_memory: bool = False) -> Iterator:
    """jobs[key] for each key of `sampler` (default 0 .. len - 1), in order, computed `workers` ahead in worker
    processes (0: here) and handed over exactly as returned: torch's default conversion would "copy" a Counter
    with update(), doubling its counts, and turn tuples into lists. Its own generator: the workers' seeds are not
    drawn from the global RNG, which dropout and resume own."""
    return iter(torch.utils.data.DataLoader(jobs, sampler=sampler, batch_size=None, num_workers=workers,
                                            collate_fn=_as_is, pin_memory=pin_memory, generator=torch.Generator()))


def auto_workers(setting: int | str, device) -> int:
    """`data_workers`: a number, or auto: none on a CPU, where the model's compute uses every core; on GPUs up
    to 4 processes per device, out of the cores this node has (one per device stays with its process)."""
    if setting != "auto":
        if int(setting) < 0:
            raise LlavatuneError(f"data_workers={setting}: give 0 (batches made in this process), a number of "
                                 "worker processes, or auto.")
        return int(setting)
    if torch.device(device).type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    return max(0, min(4, cores // per_node - 1))


class Batches:
    """Iterator over this rank's collated micro-batches from (epoch, index): every `world`-th one, from the
    `rank`-th on (None for a micro-batch whose samples were all dropped)."""

    def __init__(self, dataset, order: Order, epoch: int, index: int, pad_id: int, pack: bool = False,
                 world: int = 1, rank: int = 0, workers: int = 0, pin_memory: bool = False):
        self.dataset, self.workers = dataset, workers
        mine = itertools.islice(positions(order, epoch, index), rank, None, world)
        if workers == 0:
            self._items = (collate([dataset[i] for i in batch], pad_id, pack) for batch in mine)
            return
        self._items = in_workers(_Jobs(dataset, pad_id, pack), workers, sampler=mine, pin_memory=pin_memory)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict | None:
        item = next(self._items)
        if self.workers == 0:
            return item
        if isinstance(item, str):  # a worker stopped on a bad sample (on_bad_image=stop)
            raise LlavatuneError(item)
        batch, skipped, first_dropped, served = item
        self.dataset.skipped.update(skipped)
        for reason, where in first_dropped.items():
            self.dataset.first_dropped.setdefault(reason, where)
        self.dataset.served += served
        return batch

    def close(self) -> None:
        """Stop the workers (the iterator's own shutdown; they would also stop with the process)."""
        self._items = iter(())


class _Jobs(torch.utils.data.Dataset):
    """Runs in a worker: a list of sample indices -> (collated batch, samples dropped, the first dropped per
    reason, samples served)."""

    def __init__(self, dataset, pad_id: int, pack: bool):
        self.dataset, self.pad_id, self.pack = dataset, pad_id, pack

    def __getitem__(self, batch: list[int]):
        dataset = self.dataset  # this worker's copy: its counts start again with each job
        dataset.skipped, dataset.first_dropped, dataset.served = collections.Counter(), {}, 0
        try:
            collated = collate([dataset[i] for i in batch], self.pad_id, self.pack)
        except LlavatuneError as err:
            return str(err)
        return collated, dataset.skipped, dataset.first_dropped, dataset.served

    def __len__(self) -> int:
        return len(self.dataset)


def _as_is(item):
    return item
