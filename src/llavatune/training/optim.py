"""Optimizer (AdamW; 8-bit when bitsandbytes and a GPU are there) with the projector in its own group, and
warmup + cosine / linear / constant schedules."""

from __future__ import annotations

import torch
from torch import nn

from llavatune.model.trainable import PROJECTOR


def param_groups(model: nn.Module, lr: float, projector_lr: float | None, weight_decay: float) -> list[dict]:
    """Four groups: {projector, rest} x {decay, no decay}; biases and norms (1-D tensors) get no decay."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((PROJECTOR in name, p.ndim >= 2), []).append(p)
    out = []
    for (is_projector, decays), params in sorted(groups.items()):
        out.append({"params": params, "lr": projector_lr if is_projector and projector_lr else lr,
                    "weight_decay": weight_decay if decays else 0.0,
                    "name": f"{'projector' if is_projector else 'main'}{'' if decays else '_no_decay'}"})
    return out


def build_optimizer(model: nn.Module, name: str, lr: float, projector_lr: float | None, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    groups = param_groups(model, lr, projector_lr, weight_decay)
    if name == "adamw_8bit" or (name == "auto" and _bnb_usable()):
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def _bnb_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
        return True
    except ImportError:
        return False


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int):
    """transformers' schedules: linear warmup, then cosine to 0, linear to 0, or constant."""
    from transformers import get_scheduler

    kind = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[name]
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def continue_schedule(scheduler, base_lrs: list[float]) -> None:
    """Put a scheduler restored from a checkpoint (at the checkpoint's step) on this run's schedule: the base rates
    `base_lrs` of this config and the lambdas it was built with (warmup and total steps of this run). Restoring
    brings back the old run's rates, so a finished run given more steps would continue at the end of its old
    cosine (0) and a new `lr` would be ignored. Where nothing changed, these are the rates restored, bit for bit:
    the same product LambdaLR computes."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(base_lrs, scheduler.lr_lambdas)]
    for group, base, lr in zip(scheduler.optimizer.param_groups, base_lrs, lrs):
        group["initial_lr"], group["lr"] = base, lr
    scheduler.base_lrs, scheduler._last_lr = list(base_lrs), lrs  # what get_last_lr() reports
