"""Batched generation with the model's own template: left padding, so batched greedy answers equal
one-by-one greedy answers; stops at the template's end-of-turn text."""

from __future__ import annotations

import dataclasses

import torch

from llavatune.config import check_bounds
from llavatune.data.images import presize
from llavatune.data.templates import Template, render


@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0                # 0 = greedy too (only the top token), as OpenAI's API reads it
    stop: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    static_cache: bool = False        # GPU: compiled decode with a static cache (see speed_kwargs)

    def __post_init__(self):
        check_bounds(self, above_zero=("max_new_tokens",), at_least_zero=("temperature",))
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p is a share of the probability mass, from 0 to 1, got {self.top_p}")


def prompt_text(template: Template, turns: list[tuple[str, str]], tokenizer) -> str:
    """The generation prompt for a conversation that ends with a user turn."""
    return render(template, [*turns, ("assistant", "x")], generation_prompt=True, tokenizer=tokenizer)


def encode(processor, template: Template, conversations: list[list[tuple[str, str]]],
           images: list[list]) -> dict[str, torch.Tensor]:
    """Left-padded model inputs on the CPU: prompts in the template, images through the processor. No model
    needed, so `eval` makes the next batches in worker processes."""
    tokenizer = processor.tokenizer
    prompts = [prompt_text(template, turns, tokenizer) for turns in conversations]
    flat_images = [presize(im, processor.image_processor) for ims in images for im in ims]
    tokenizer.padding_side = "left"
    add_special = template.style != "hf"  # the tokenizer's own template writes its own bos
    return dict(processor(images=flat_images or None, text=prompts, return_tensors="pt", padding=True,
                          add_special_tokens=add_special))


def prepare(processor, template: Template, inputs: dict[str, torch.Tensor], cfg: GenerationConfig,
            device) -> tuple[dict, dict, list[str]]:
    """(encoded inputs on the device, generate() keyword arguments, stop strings)."""
    tokenizer = processor.tokenizer
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    sampling = cfg.temperature > 0 and cfg.top_p > 0
    stop = [s for s in [*cfg.stop, template.stop] if s]
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
                  temperature=cfg.temperature if sampling else None, top_p=cfg.top_p if sampling else None,
                  pad_token_id=tokenizer.pad_token_id, stop_strings=stop or None, tokenizer=tokenizer,
                  **(speed_kwargs(device) if cfg.static_cache else {}))
    return inputs, kwargs, stop


def speed_kwargs(device) -> dict:
    """On a GPU: a static KV cache, with which transformers compiles the decode step (CUDA graphs) once per
    batch shape; the first answer of a new shape pays the compilation."""
    return {"cache_implementation": "static"} if torch.device(device).type == "cuda" else {}


@dataclasses.dataclass
class Answer:
    text: str
    prompt_tokens: int       # the prompt's tokens, image tokens included (padding not)
    completion_tokens: int   # tokens generated, up to and including the end of turn
    finish_reason: str       # "stop": end of turn or a stop string; "length": max_new_tokens ran out first


@torch.no_grad()
def answers(model, processor, template: Template, inputs: dict[str, torch.Tensor], cfg: GenerationConfig,
            device: torch.device | str = "cpu", **generate_kwargs) -> list[Answer]:
    """One answer per row of encode()'s inputs, with its token counts and why it ended; `generate_kwargs` go to
    generate() (synced_gpus in training)."""
    inputs, kwargs, stop = prepare(processor, template, inputs, cfg, device)
    out = model.generate(**inputs, **kwargs, **generate_kwargs)
    return to_answers(out, inputs, model, processor.tokenizer, stop)


def to_answers(out: torch.Tensor, inputs: dict, model, tokenizer, stop: list[str]) -> list[Answer]:
    """generate()'s output (batch, prompt + new tokens) -> Answers. A row that finished early is padded after
    its end-of-turn token (or after the tokens of a stop string)."""
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends]) | {tokenizer.eos_token_id}
    prompts = inputs["attention_mask"].sum(dim=1).tolist()
    result = []
    for row, n_prompt in zip(out[:, inputs["input_ids"].shape[1]:].tolist(), prompts):
        text = tokenizer.decode(row, skip_special_tokens=False)
        ended = next((i + 1 for i, t in enumerate(row) if t in ends), None)
        n = ended or sum(t != tokenizer.pad_token_id for t in row)
        stopped = ended is not None or any(s in text for s in stop)
        result.append(Answer(clean(text, stop, tokenizer.all_special_tokens), int(n_prompt), n,
                             "stop" if stopped else "length"))
    return result


def clean(text: str, stop: list[str], specials: list[str]) -> str:
    """Cut at the first stop string, then drop special-token residue (pad, eos)."""
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    for token in specials:
        text = text.replace(token, "")
    return text.strip()
