"""Data parallelism through accelerate: which rank this is, and the few collectives the loop needs.

One process: everything is a no-op. Several (torchrun / `llavatune train --gpus` / `--procs`): accelerate wraps
the model in DDP (a whole copy per rank), or torch's FSDP2 shards it (`strategy: fsdp`: weights, gradients and
optimizer state sharded over the ranks, each LLM decoder layer and vision encoder layer its own unit; accelerate's
FSDP plugin is GPU-only, torch's runs on CPU processes too); each rank trains on its
share of every optimizer step's micro-batches, and only rank 0 logs and writes. Checkpoints hold whole
weights and an optimizer state keyed by parameter names, gathered from every rank, so they are the same files
for any strategy and any number of processes.
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
    strategy: str = "ddp"
    dtypes: dict = dataclasses.field(default_factory=dict)  # parameter name -> dtype before FSDP's fp32 storage

    @property
    def sharded(self) -> bool:
        return self.world > 1 and self.strategy == "fsdp"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float, device) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def gather(self, value: float, device) -> list[float]:
        """`value` of every rank, in rank order (a collective: every rank calls it)."""
        if self.world == 1:
            return [value]
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return [float(x.item()) for x in out]

    def all_true(self, flag: bool, device) -> bool:
        """True when `flag` holds on every rank (so all ranks take the same branch around collectives)."""
        return self.sum(0.0 if flag else 1.0, device) == 0.0

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def no_sync(self, model, skip: bool):
        """DDP's no_sync for micro-batches before the last of a step: gradients are reduced once per step.
        FSDP reduces every micro-batch: unreduced gradients would be whole, not sharded."""
        return model.no_sync() if skip and self.world > 1 and not self.sharded else contextlib.nullcontext()

    def close(self) -> None:
        """Tear the process group down before exit: left to interpreter shutdown, gloo may abort the process."""
        if self.world > 1 and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()

    def wrap(self, model, compute_dtype: torch.dtype = torch.float32):
        """The model ready for this strategy. FSDP2 (torch's fully_shard) shards in place: each repeated layer
        its own unit, the rest with the root; parameter names do not change. Build the optimizer after this.

        A unit must hold one dtype, and a bf16 LoRA run mixes bf16 base weights with fp32 adapters: under FSDP
        the shards are stored in fp32 and gathered in the compute dtype (gradients reduced in fp32)."""
        if self.world == 1:
            return model
        if self.sharded:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            policy = MixedPrecisionPolicy()
            if compute_dtype != torch.float32:
                self.dtypes = {name: p.dtype for name, p in model.state_dict().items()}  # saved as trained
                model.float()
                policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
            for layer in sharded_layers(model):
                fully_shard(layer, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            return model
        return self.accelerator.prepare_model(model)

    def model_state(self, model) -> dict | None:
        """Under FSDP the whole weights, gathered on rank 0 (a collective: every rank calls it); else None
        (the model is whole on every rank and saves itself)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name: t.to(self.dtypes.get(name, t.dtype)) for name, t in state.items()}

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer state keyed by parameter names, whole (gathered on rank 0 under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.sharded)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=self.sharded))


def sharded_layers(model) -> list:
    """FSDP units: the decoder layers of the LLM and the encoder layers of the vision tower."""
    from llavatune.training.fast import decoder_layers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision = getattr(base.model.vision_tower, "vision_model", base.model.vision_tower)
    return [*decoder_layers(model), *vision.encoder.layers]


def setup(device: str, strategy: str = "ddp") -> tuple[Ranks, torch.device | None]:
    """Ranks from the launcher's environment; (Ranks(), None) when this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(), None
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    return Ranks(accelerator.process_index, accelerator.num_processes, accelerator, strategy), accelerator.device


def launch_command(argv: list[str], procs: int, nodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                   master_port: int = 29500) -> list[str]:
    """`torchrun` running `llavatune train ...` once per process (one per GPU, or CPU processes with gloo)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--nnodes={nodes}",
            f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={master_port}",
            "-m", "llavatune.cli", *argv]
