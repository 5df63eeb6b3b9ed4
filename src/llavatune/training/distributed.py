"""Data parallelism through accelerate: which rank this is, and the few collectives the loop needs.

One process: everything is a no-op. Several (torchrun / `llavatune train --gpus` / `--procs`): the model is
wrapped in DDP by accelerate, each rank trains on its share of every optimizer step's micro-batches, and only
rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch


@dataclasses.dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    accelerator: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float, device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def all_true(self, flag: bool, device) -> bool:
        """True when `flag` holds on every rank (so all ranks take the same branch around collectives)."""
        return self.sum(0.0 if flag else 1.0, device) == 0.0

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def no_sync(self, model, skip: bool):
        """DDP's no_sync for micro-batches before the last of a step: gradients are reduced once per step."""
        return model.no_sync() if skip and self.world > 1 else contextlib.nullcontext()

    def close(self) -> None:
        """Tear the process group down before exit: left to interpreter shutdown, gloo may abort the process."""
        if self.world > 1 and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()

    def wrap(self, model):
        return self.accelerator.prepare_model(model) if self.world > 1 else model


def setup(device: str) -> tuple[Ranks, torch.device | None]:
    """Ranks from the launcher's environment; (Ranks(), None) when this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(), None
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    return Ranks(accelerator.process_index, accelerator.num_processes, accelerator), accelerator.device


def launch_command(argv: list[str], procs: int, nodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                   master_port: int = 29500) -> list[str]:
    """`torchrun` running `llavatune train ...` once per process (one per GPU, or CPU processes with gloo)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--nnodes={nodes}",
            f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
            "-m", "llavatune.cli", *argv]
