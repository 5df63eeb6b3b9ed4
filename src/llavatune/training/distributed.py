"""Data parallelism: which rank this is, and the few collectives the loop needs.

One process: everything is a no-op. Several (torchrun / `llavatune train --gpus` / `--procs`): accelerate wraps
the model in DDP (a whole copy per rank), or torch's FSDP2 shards it (`strategy: fsdp`: weights, gradients and
optimizer state sharded over the ranks, each LLM decoder layer and vision encoder layer its own unit; accelerate's
FSDP plugin is GPU-only, torch's runs on CPU processes too), or DeepSpeed's ZeRO does (`zero2`: gradients and
optimizer state; `zero3`: the weights too; `zero3-offload`: in CPU memory); each rank trains on its
share of every optimizer step's micro-batches, and only rank 0 logs and writes. Checkpoints hold whole
weights and an optimizer state keyed by parameter names, gathered from every rank, so they are the same files
for any strategy and any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from llavatune.errors import LlavatuneError


@dataclasses.dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    accelerator: object = None
    strategy: str = "ddp"
    dtypes: dict = dataclasses.field(default_factory=dict)  # parameter name -> dtype before FSDP's fp32 storage
    param_names: list = dataclasses.field(default_factory=list)  # DeepSpeed: names per optimizer group
    kept_env: dict = dataclasses.field(default_factory=dict)  # launcher variables set for a one-process group

    @property
    def sharded(self) -> bool:
        return self.world > 1 and self.strategy == "fsdp"

    @property
    def deepspeed(self) -> bool:
        """ZeRO runs through DeepSpeed even in one process (zero3-offload is how a big model fits one card)."""
        return self.accelerator is not None and self.strategy.startswith("zero")

    @property
    def places_weights(self) -> bool:
        """FSDP over processes and ZeRO-3 move the weights to the device shard by shard: the model waits on the
        CPU until then, so no card ever holds it whole (a 13B model in fp32 is 52 GB)."""
        return self.sharded or (self.deepspeed and self.strategy != "zero2")

    @property
    def receives_weights(self) -> bool:
        """Where the weights are placed shard by shard, only rank 0 reads them: the other ranks build the model on
        the meta device and get rank 0's values when it is wrapped (wrap, engine). One CPU copy per run, not
        one per process (a 13B model in bf16 is 26 GB)."""
        return self.places_weights and not self.main

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
        return self.all_true_each([flag], device)[0]

    def all_true_each(self, flags: list[bool], device) -> list[bool]:
        """all_true of each flag, in one collective (every rank gives as many)."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return [bool(x) for x in t.tolist()]

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def no_sync(self, model, skip: bool):
        """DDP's no_sync for micro-batches before the last of a step: gradients are reduced once per step.
        FSDP reduces every micro-batch: unreduced gradients would be whole, not sharded."""
        return model.no_sync() if skip and self.world > 1 and not self.sharded else contextlib.nullcontext()

    def close(self, wait: bool = True) -> None:
        """Tear the process group down before exit: left to interpreter shutdown, gloo may abort the process.
        `wait`: meet the other ranks first (a normal end); not after a failure, when they may be gone."""
        if self.accelerator is not None and torch.distributed.is_initialized():
            if wait:
                self.barrier()
            ds_comm = sys.modules.get("deepspeed.comm")
            if ds_comm is not None and ds_comm.is_initialized():  # also drops the groups DeepSpeed cached, which
                ds_comm.destroy_process_group()                     # a next run in this process would reuse
            else:
                torch.distributed.destroy_process_group()
        for k, v in self.kept_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def wrap(self, model, compute_dtype: torch.dtype = torch.float32):
        """The model ready for this strategy. FSDP2 (torch's fully_shard) shards in place: each repeated layer
        its own unit, the rest with the root; parameter names do not change. Build the optimizer after this.

        A bf16 run mixes bf16 weights with fp32 trained parts. FSDP stores what trains in fp32 (its optimizer
        steps fp32 master weights, gradients reduced in fp32) and gathers everything in the compute dtype; frozen
        weights stay bf16 (torch >= 2.8: a unit's trained parameters must share one dtype, frozen ones may
        differ; older torch wants one dtype for all, so everything is stored in fp32 there).

        Only rank 0 holds values (receives_weights): the other ranks allocate their shards, then rank 0 broadcasts
        the weights tensor by tensor, and the buffers."""
        if self.world == 1 or self.deepspeed:  # DeepSpeed wraps model and optimizer together: see engine()
            return model
        if not self.sharded:
            return self.accelerator.prepare_model(model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy()
        if compute_dtype != torch.float32:
            self.dtypes = {name: p.dtype for name, p in model.state_dict().items()}  # saved as trained
            if torch.torch_version.TorchVersion(torch.__version__) < "2.8":
                model.float()
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        whole = model.state_dict() if self.main else {}  # rank 0's CPU tensors, kept until broadcast
        for layer in sharded_layers(model):  # from the CPU, each unit moves to the device as its shard
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        if not self.main:
            _allocate(model, self.accelerator.device)
        set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        _broadcast_buffers(model)
        return model

    def engine(self, model, optimizer, batch_size: int, grad_accum: int, max_grad_norm: float,
               autocast: torch.dtype | None, settings: Path | None = None):
        """(DeepSpeed engine, its optimizer) for strategy zero2 / zero3 / zero3-offload. The engine reduces,
        clips and steps at the last micro-batch of each window (gradient_accumulation_steps = the window); our
        scheduler keeps driving the learning rates of the same parameter groups. Compute precision is the run's
        autocast (None: fp32), so each parameter keeps the dtype the run gave it (fp32 adapters over a bf16 base)."""
        try:
            deepspeed = _import_deepspeed(cpu=self.accelerator.device.type == "cpu")
        except ImportError:
            raise LlavatuneError(f"strategy={self.strategy} needs DeepSpeed: pip install 'llavatune[gpu]' "
                                 "(or deepspeed), or use strategy=fsdp, which shards the same way.") from None
        name_of = {p: n for n, p in model.named_parameters()}
        self.param_names = [[name_of[p] for p in group["params"]] for group in optimizer.param_groups]
        trained = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        config = deepspeed_config(self.strategy, batch_size, grad_accum, max_grad_norm, autocast, settings, trained)
        if self.places_weights:  # partition from the CPU one parameter at a time (the engine would move it whole)
            if not self.main:
                _allocate(model, "cpu")  # each parameter is filled from rank 0 just before it is partitioned
            deepspeed.zero.Init(module=model, config_dict_or_path=config, mem_efficient_linear=False)
            model.to(self.accelerator.device)  # the buffers; partitioned parameters are already where ZeRO keeps them
            _broadcast_buffers(model)
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine, ds_optimizer

    def model_state(self, model) -> dict | None:
        """Under FSDP and ZeRO-3 the whole weights, gathered on rank 0 (a collective: every rank calls it); else
        None (the model is whole on every rank and saves itself). A tied weight is kept once, under its first
        name, as save_pretrained keeps it for a whole model (embed_tokens, not lm_head)."""
        if self.deepspeed and self.strategy != "zero2":
            state = model._zero3_consolidated_16bit_state_dict()  # every rank takes part; rank 0 gets it
            state = {k: v.cpu() for k, v in state.items()} if self.main else None
        elif self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            for name, t in state.items():  # cast in place: each fp32 copy is freed as its bf16 one is made
                state[name] = t.to(self.dtypes.get(name, t.dtype))
        else:
            return None
        aliases = _tied_aliases(getattr(model, "module", model))  # DeepSpeed's engine holds the model as .module
        return {k: v for k, v in state.items() if k not in aliases} if state is not None else None

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer state keyed by parameter names, whole (gathered under FSDP and DeepSpeed): the layout
        of torch's get_optimizer_state_dict, whatever the strategy, so any run resumes under any other."""
        if self.deepspeed:
            return self._deepspeed_optimizer_state(model, optimizer)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.sharded)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if self.deepspeed:
            return self._load_deepspeed_optimizer_state(model, optimizer, state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=self.sharded))

    def _deepspeed_optimizer_state(self, engine, optimizer) -> dict:
        """AdamW's moments of each trained parameter, gathered from the ZeRO partitions (every rank calls it)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        _link_optimizer_state(optimizer)
        params = dict(engine.module.named_parameters())
        step = _deepspeed_step(optimizer)
        state = {name: {"step": step.clone(), **{key: safe_get_full_optimizer_state(params[name], key).cpu()
                                                 for key in ("exp_avg", "exp_avg_sq")}}
                 for names in self.param_names for name in names}
        groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": names}
                  for group, names in zip(optimizer.param_groups, self.param_names)]
        return {"state": state, "param_groups": groups}

    def _load_deepspeed_optimizer_state(self, engine, optimizer, saved: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        _create_optimizer_state(optimizer)
        params = dict(engine.module.named_parameters())
        for names in self.param_names:
            for name in names:
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(params[name], saved["state"][name][key], key)
        step = next(iter(saved["state"].values()))["step"]
        for inner in optimizer.optimizer.state.values():
            inner["step"] = step.clone() if torch.is_tensor(inner["step"]) else float(step)
        for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):  # lr, betas, ... as saved
            group.update({k: v for k, v in saved_group.items() if k != "params"})


# DeepSpeed's default gradient bucket, which it allocates whole on the GPU (fp32: 1.86 GiB; two with overlap_comm)
# however little trains: an H200 showed a 1.93 GiB peak for the 0.2M-parameter tiny model under ZeRO-2 and ZeRO-3
# (2026-12-04). A bucket larger than what trains is never filled, so capping it there changes no reduction.
REDUCE_BUCKET = 500_000_000
RUN_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
             "gradient_clipping", "fp16", "bf16", "torch_autocast", "optimizer", "scheduler")


def deepspeed_config(strategy: str, batch_size: int, grad_accum: int, max_grad_norm: float,
                     autocast: torch.dtype | None = None, settings: Path | None = None,
                     trained: int | None = None) -> dict:
    """zero2: optimizer state and gradients partitioned; zero3: the weights too; zero3-offload: ZeRO-3 with
    optimizer state and weights in CPU memory. `settings` (a DeepSpeed JSON, e.g. the shipped
    recipes/deepspeed/zero3.json with its GPU bucket sizes) refines the rest; what the run owns (batch sizes,
    accumulation, clipping, precision, optimizer, schedule) comes from the run and may only be "auto" there.
    `trained`: how many values train; the gradient bucket is made no larger (see REDUCE_BUCKET)."""
    stage = {"zero2": 2, "zero3": 3, "zero3-offload": 3}[strategy]
    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
            "reduce_bucket_size": min(REDUCE_BUCKET, trained or REDUCE_BUCKET)}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if strategy == "zero3-offload":
        zero.update(offload_optimizer={"device": "cpu", "pin_memory": True},
                    offload_param={"device": "cpu", "pin_memory": True})
    config = {"zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
              "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False}
    if settings is not None:
        try:
            user = json.loads(Path(settings).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LlavatuneError(f"deepspeed_config={settings}: cannot read it as JSON ({err}).") from None
        owned = [k for k in RUN_OWNED if k in user and user[k] != "auto"]
        if owned:
            raise LlavatuneError(f"{settings}: '{owned[0]}' is set by the run (batch_size, grad_accum, "
                                 "max_grad_norm, precision, lr and schedule keys); remove it or write \"auto\".")
        if user.get("zero_optimization", {}).get("stage", stage) != stage:
            raise LlavatuneError(f"{settings}: zero_optimization.stage {user['zero_optimization']['stage']} "
                                 f"contradicts strategy={strategy}; pick the strategy of that stage.")
        zero.update(user.pop("zero_optimization", {}))
        config.update({k: v for k, v in user.items() if k not in RUN_OWNED})
    # The engine turns off an autocast begun outside it unless its own section names one (on a GPU: a bf16 run
    # then fed bf16 activations into fp32 adapters); no lower-precision modules, so gradients are reduced in the
    # dtype of what trains (fp32), as DDP reduces them. fp16 also gets ZeRO's own loss scaler this way.
    if autocast is not None:
        config["torch_autocast"] = {"enabled": True, "dtype": str(autocast).removeprefix("torch."),
                                    "lower_precision_safe_modules": []}
    return {**config, "train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum,
            "gradient_clipping": max_grad_norm if max_grad_norm > 0 else 0.0, "zero_optimization": zero}


def _create_optimizer_state(optimizer) -> None:
    """AdamW makes its moments at its first step, and ZeRO links them to the parameters only then; before saved
    moments can go in, step each flat fp32 partition once in a way that moves nothing (zero gradients, lr 0,
    so no decay either). ZeRO-3 hands its partitions to AdamW one sub-group at a time; ZeRO-1/2 keep them in
    AdamW's groups."""
    inner = optimizer.optimizer
    if not inner.state:
        partitions = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
        units = ([(optimizer.sub_group_to_group_id[i], [p]) for i, p in enumerate(partitions)] if partitions
                 else [(i, list(group["params"])) for i, group in enumerate(inner.param_groups)])
        for group_id, params in units:
            group = inner.param_groups[group_id]
            kept = group["params"], group["lr"]
            group["params"], group["lr"] = params, 0.0
            for p in params:
                p.grad = torch.zeros_like(p)
            inner.step()
            for p in params:
                p.grad = None
            group["params"], group["lr"] = kept
    _link_optimizer_state(optimizer)


def _link_optimizer_state(optimizer) -> None:
    """ZeRO-1/2 link each parameter to its AdamW state after the first step, but do so inside the loop over
    parameter groups, so a second group (the projector's own lr) stays unlinked; link them all again."""
    relink = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if relink is not None and optimizer.optimizer.state:
        optimizer._hp_optimizer_states_linked = False
        relink()


def _deepspeed_step(optimizer) -> torch.Tensor:
    """AdamW's step count, from the inner optimizer behind the ZeRO partitions."""
    steps = [s["step"] for s in optimizer.optimizer.state.values() if "step" in s]
    step = steps[0] if steps else 0
    return step.detach().clone().float() if torch.is_tensor(step) else torch.tensor(float(step))


def _tied_aliases(model) -> set[str]:
    """Names of parameters that are another name's parameter (lm_head.weight tied to embed_tokens.weight)."""
    seen, aliases = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return aliases


def _allocate(model, device) -> None:
    """Uninitialized storage on `device` for a model built on the meta device (its values come from rank 0).
    Parameters are swapped in place, so weights tied on the meta device (lm_head = embed_tokens) stay one."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=device)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def _broadcast_buffers(model) -> None:
    """Rank 0's buffers to every rank: those a state dict leaves out (rotary inv_freq, CLIP position_ids) were
    never loaded on the other ranks, and ZeRO-3 broadcasts only parameters."""
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def sharded_layers(model) -> list:
    """FSDP units: the decoder layers of the LLM and the encoder layers of the vision tower."""
    from llavatune.training.fast import decoder_layers

    from llavatune.model.trainable import unwrap

    tower = unwrap(model).model.vision_tower
    vision = getattr(tower, "vision_model", tower)
    return [*decoder_layers(model), *vision.encoder.layers]


def setup(device: str, strategy: str = "ddp") -> tuple[Ranks, torch.device | None]:
    """Ranks from the launcher's environment; (Ranks(), None) when this is a single process, unless the
    strategy is DeepSpeed's, which needs a process group even for one process (zero3-offload on one card)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not strategy.startswith("zero"):
        return Ranks(), None
    kept = _one_process_env() if "WORLD_SIZE" not in os.environ else {}
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    if (strategy == "fsdp" and accelerator.device.type == "cpu" and accelerator.num_processes > 1
            and torch.torch_version.TorchVersion(torch.__version__) < "2.7"):
        raise LlavatuneError(f"strategy=fsdp on CPU processes needs torch >= 2.7 (this is {torch.__version__}; "
                             "its FSDP2 wants CUDA streams): upgrade torch, or use ddp, zero2 or zero3.")
    if accelerator.process_index > 0:  # one progress bar and one copy of each library warning: rank 0's
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    return (Ranks(accelerator.process_index, accelerator.num_processes, accelerator, strategy, kept_env=kept),
            accelerator.device)


def _import_deepspeed(cpu: bool):
    """DeepSpeed, quiet and quick to start. On CPU processes it is told its accelerator (it warns on every rank
    when it has to guess), and it skips the shared-memory all-reduce it compiles when its group starts: ~40 s of
    C++ on 2 cores, again for every venv, silent before step 1, for an op only its inference engine calls
    (training reduces through the process group, gloo here). Which ops can be built is one module-level dict
    that DeepSpeed reads at that moment. On any device, its calls to the collectives torch 2.13 renamed would
    print a FutureWarning per rank and step."""
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None) if cpu else None
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False
    warnings.filterwarnings("ignore", r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` "
                            "is deprecated", FutureWarning)
    return deepspeed


def _one_process_env() -> dict:
    """Set the launcher's variables for a group of one (DeepSpeed reads them too); returns what they were, for
    Ranks.close to put back, so that a later launch from this process does not take itself for a rank.
    OMP_NUM_THREADS, unless set, is torch's thread count: accelerate warns of a CPU group without it, then
    sets the threads to the physical cores per local rank, which for one process is what torch already runs."""
    from llavatune.training.launch import free_port

    single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port()),
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())}
    kept = {k: os.environ.get(k) for k in single}
    os.environ.update(single)
    return kept

