"""Which parameters train, computed once as a set of names, and the adapters that make them.

stage pretrain: the projector only. stage finetune with method
  full:   projector + LLM (+ vision tower when train_vision);
  freeze: projector + the last `trainable_layers` LLM decoder layers (0 = projector only);
  lora / qlora: LoRA adapters on LLM linear layers chosen by name or regex (never the vision tower or the
          projector unless asked), and the projector trained fully (saved with the adapter).
"""

from __future__ import annotations

import collections
import contextlib
import re
import warnings

from torch import nn

from llavatune.errors import LlavatuneError

LLM_PREFIX = "model.language_model."
VISION_PREFIX = "model.vision_tower."
PROJECTOR = "multi_modal_projector"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "qkv_proj", "gate_up_proj", "wqkv", "wo", "w1", "w2", "w3")
VISION_LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def component(name: str) -> str:
    if "lora_" in name:
        return "adapters"
    if PROJECTOR in name:
        return "projector"
    if "vision_tower" in name:
        return "vision"
    return "llm"


def lora_targets(model: nn.Module, targets: list[str], regex: str | None, vision: bool) -> list[str]:
    """Full names of the Linear modules that get LoRA. `targets` are module-name endings ('q_proj') or 'all';
    `regex` (full match on the whole name) replaces them. Only modules inside the LLM qualify, plus the
    vision tower's attention/MLP when `vision` is set; the projector never does (it trains fully)."""
    pattern = re.compile(regex) if regex else None
    wanted = set(ALL_LINEAR) if "all" in targets else set(targets)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or PROJECTOR in name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith(LLM_PREFIX):
            if (pattern.fullmatch(name) if pattern else leaf in wanted):
                names.append(name)
        elif vision and name.startswith(VISION_PREFIX) and leaf in VISION_LINEAR:
            names.append(name)
    if not names:
        raise LlavatuneError(f"LoRA targets {regex or targets} match no Linear layer of the LLM; module names "
                             f"look like {LLM_PREFIX}layers.0.self_attn.q_proj.")
    return names


def apply(model: nn.Module, stage: str, method: str, lora=None, train_vision: bool = False,
          trainable_layers: int = 0) -> nn.Module:
    """Freeze everything, then open what (stage, method) trains; LoRA wraps the model in a PeftModel."""
    for p in model.parameters():
        p.requires_grad_(False)
    if stage == "pretrain":
        _open(model, lambda n: PROJECTOR in n)
        return model
    if method in ("lora", "qlora"):
        return _apply_lora(model, lora, train_vision)
    if method == "full":
        _open(model, lambda n: PROJECTOR in n or n.startswith(LLM_PREFIX) or n.startswith("lm_head.")
              or (train_vision and n.startswith(VISION_PREFIX)))
        return model
    if method == "freeze":
        n_layers = model.config.text_config.num_hidden_layers
        last = {f"{LLM_PREFIX}layers.{i}." for i in range(n_layers - trainable_layers, n_layers)}
        _open(model, lambda n: PROJECTOR in n or any(n.startswith(p) for p in last)
              or (train_vision and n.startswith(VISION_PREFIX)))
        return model
    raise LlavatuneError(f"unknown method '{method}': choose full, freeze, lora or qlora.")


def _open(model: nn.Module, keep) -> None:
    for name, p in model.named_parameters():
        if keep(name):
            p.requires_grad_(True)


@contextlib.contextmanager
def peft_quietly():
    """PEFT 0.21 reads `is_gradient_checkpointing`, which transformers 5.2x deprecates with a FutureWarning on
    every LoRA wrap or load: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _apply_lora(model: nn.Module, lora, train_vision: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, lora.targets, lora.regex, lora.vision)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        modules_to_save=[PROJECTOR], bias="none", task_type="CAUSAL_LM")
    with peft_quietly():
        peft_model = get_peft_model(model, config)
    if train_vision:
        _open(peft_model, lambda n: "vision_tower" in n and "lora_" not in n)
    return peft_model


def unwrap(model: nn.Module) -> nn.Module:
    """The LlavaForConditionalGeneration inside a DDP / DeepSpeed wrapper (`.module`) and a PeftModel."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def describe(stage: str, method: str) -> str:
    """What a run trains, in words: stage 1 trains the projector only, so its method (LoRA by default) does not
    apply; qlora there still loads the LLM in 4-bit."""
    if stage == "finetune":
        return f"stage finetune, method {method}"
    return f"stage pretrain (the projector only{', LLM in 4-bit' if method == 'qlora' else ''})"


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """{component: {"total": n, "trainable": n}}; ModulesToSaveWrapper copies are counted once."""
    out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"total": 0, "trainable": 0})
    for name, p in model.named_parameters():
        if "original_module" in name:  # PEFT keeps the frozen original next to the trained copy
            continue
        comp = component(name)
        n = getattr(p, "ds_numel", p.numel())  # a ZeRO-3 partitioned parameter is empty here (numel 0)
        out[comp]["total"] += n
        out[comp]["trainable"] += n if p.requires_grad else 0
    return dict(out)


def report(model: nn.Module) -> str:
    """Lines for the terminal and trainable.txt: counts per component, the share, then every trained name."""
    c = counts(model)
    total = sum(v["total"] for v in c.values())
    trained = sum(v["trainable"] for v in c.values())
    lines = [f"{'component':<10} {'trainable':>14} {'total':>14}"]
    lines += [f"{k:<10} {v['trainable']:>14,} {v['total']:>14,}" for k, v in sorted(c.items())]
    lines.append(f"{'all':<10} {trained:>14,} {total:>14,}  ({100 * trained / max(total, 1):.3f}% trainable)")
    return "\n".join(lines)

