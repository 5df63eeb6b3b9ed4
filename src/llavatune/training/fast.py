"""The fast training path: each lever is one switch, shared by `train` and `bench train`.

- targets_loss (always on, exact): logits only at positions that have a target. In LLaVA data most positions
  are image or prompt tokens, so most of the (tokens x vocab) logits, their fp32 copy and their gradient are
  never made; with a 150K vocabulary that is most of the memory the loss used to take.
- attention: the kernel of the LLM. Packed micro-batches need one that skips the blocks between samples
  (varlen: torch's variable-length flash attention, training/varlen.py; flash_attention_2; flex_attention);
  SDPA runs them with a dense block-diagonal mask.
- checkpoint_layers: with gradient checkpointing, how many LLM decoder layers recompute their activations
  (the first k; None = all). Each layer left out costs its activations in memory and saves its recompute.
  auto: as few as fit a memory budget, measured on the run's largest micro-batch (loop.fit_checkpointing).
- kernels=liger: Liger's fused RMSNorm, SwiGLU and RoPE in the LLM (Llama, Mistral, Qwen2, ... families).
  Liger patches transformers' module classes for the whole process, so models built afterwards get them too.
- compile: torch.compile each LLM decoder layer (regional: one graph reused by every layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavatune.data import features
from llavatune.data.tokenize import IGNORE_INDEX
from llavatune.errors import LlavatuneError
from llavatune.model import trainable
from llavatune.training import varlen

ATTENTION = ("auto", "sdpa", "varlen", "flex_attention", "flash_attention_2", "eager")


def targets_loss(model, batch: dict, n_items) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions that have a target, divided by `n_items` (the
    supervised tokens of the whole accumulation window): the value and gradient of the model's own loss with
    num_items_in_batch, without the logits of the other positions. A packed batch (one row) keeps exactly its
    target positions; a padded one keeps the positions where any row has a target."""
    labels = batch["labels"]                                   # (B, T)
    has_target = labels[:, 1:] != IGNORE_INDEX                 # [b, t]: position t predicts labels[b, t + 1]
    positions = has_target.any(0).nonzero().squeeze(1)         # (K,)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "image_features" in inputs:  # a vision cache: projected features in place of the tower's (data/features.py)
        inputs = features.embed(model, inputs)
    # no KV cache in training: it costs memory, and with one transformers ignores packed positions
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits   # (B, K, vocab)
    targets = labels[:, 1:][:, positions]                      # (B, K), IGNORE_INDEX where a row has none
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum") / n_items


def configure(model, attention: str, kernels: str, device: torch.device, packing: bool) -> None:
    """The attention kernel and (on a GPU, when chosen) Liger's kernels; before LoRA wraps the model."""
    set_attention(model, pick_attention(attention, device, packing))
    if pick_kernels(kernels, device) == "liger":
        use_liger(model)


def pick_attention(name: str, device: torch.device, packing: bool) -> str:
    """auto: flash_attention_2 when flash-attn is installed on a GPU; for packed batches on a GPU torch's varlen
    kernel (flex_attention on a torch without it); else SDPA."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
        return "flash_attention_2"
    except ImportError:
        if not packing:
            return "sdpa"
        return "varlen" if varlen.available() else "flex_attention"


def set_attention(model, name: str) -> None:
    """The LLM's kernel only; the vision tower keeps its own (its batches are never packed)."""
    if name == "varlen":
        name = varlen.register()
    try:
        model.set_attn_implementation({"text_config": name})
    except (ValueError, ImportError) as err:
        raise LlavatuneError(f"attention={name}: {err}") from None


def checkpoint_layers(model, k: int | str | None) -> None:
    """Gradient checkpointing on the LLM's first k decoder layers only (None: all of them; "auto" is resolved
    by loop.fit_checkpointing, which starts from all)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if k not in (None, "auto"):
        checkpoint_first(model, k)


def checkpoint_first(model, k: int) -> None:
    """With checkpointing enabled: the first k LLM decoder layers recompute, the others keep activations."""
    layers = decoder_layers(model)
    if not 0 <= k <= len(layers):
        raise LlavatuneError(f"checkpoint_layers={k}: the LLM has {len(layers)} decoder layers.")
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < k


def layers_to_checkpoint(n_layers: int, peak_all: int, peak_one_less: int, budget: int, reserve: int,
                         margin: float = 0.1) -> int:
    """How many of `n_layers` must stay checkpointed so the peak stays within `budget` bytes. `peak_all` and
    `peak_one_less` are measured peaks (all layers checkpointed / all but one); their difference is one layer's
    activations. `reserve`: what the measurement did not hold yet (optimizer state). `margin`: the share of
    each layer's activations added for micro-batches a little longer than the measured one."""
    per_layer = max(peak_one_less - peak_all, 1) * (1 + margin)
    free = int((budget - reserve - peak_all) // per_layer)
    return n_layers - min(max(free, 0), n_layers)


def pick_kernels(name: str, device: torch.device) -> str:
    """auto: Liger on a GPU when liger-kernel is installed (measured faster on both shapes, docs/benchmarks.md)."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "none"
    try:
        import liger_kernel  # noqa: F401
        return "liger"
    except ImportError:
        return "none"


def use_liger(model) -> None:
    """Liger's fused RMSNorm / SwiGLU / RoPE patched into the LLM instance (call before LoRA wraps it)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise LlavatuneError("kernels=liger needs liger-kernel (and a CUDA GPU): pip install 'llavatune[gpu]'") from None
    llm = model.model.language_model
    _apply_liger_kernel_to_instance(llm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def compile_layers(model) -> None:
    """torch.compile each LLM decoder layer in place; sequence lengths vary, so shapes are dynamic."""
    for layer in decoder_layers(model):
        layer.compile(dynamic=True)


def decoder_layers(model) -> torch.nn.ModuleList:
    return trainable.unwrap(model).model.language_model.layers
