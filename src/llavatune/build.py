"""Verb `build`: a causal LM + a vision encoder + a fresh projector -> a self-contained llava-hf checkpoint.

    llavatune build --llm Qwen/Qwen1.5-4B-Chat --vision openai/clip-vit-large-patch14-336 --out models/qwen-clip
    llavatune build --preset tiny --out models/tiny      # random weights, offline, seconds on a CPU
    llavatune build --preset internlm2-1.8b --dtype bfloat16 --out models/random-1.8b   # a published shape
    llavatune build --preset llava15-7b --dtype bfloat16 --device cuda --out models/random-7b  # made on a GPU

A preset builds random weights offline: `tiny` / `tiny-qwen` (a few MB), or a shape of model/shapes.py at its
published size (llava15-7b, qwen15-4b, internlm2-1.8b, ...) with the tiny tokenizer of its family, to try memory,
speed and the distributed set-up on a GPU before downloading anything. It cannot talk: the weights are random.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch

from llavatune import progress
from llavatune.config import save_run_config
from llavatune.data.templates import get_template
from llavatune.errors import LlavatuneError
from llavatune.model import compose, tiny

console = progress.messages


@dataclasses.dataclass
class BuildConfig:
    out: Path                            # the checkpoint folder to write
    llm: str | None = None               # hub id or folder of a causal LM (llama, qwen2, mistral, phi3, gemma...)
    vision: str | None = None            # hub id or folder of a vision encoder (CLIP, SigLIP)
    preset: str | None = None            # tiny | tiny-qwen | a shape name: random parts instead of loading
    projector: str = "mlp2x_gelu"        # linear | mlp2x_gelu
    feature_layer: int = -2              # hidden state of the tower that feeds the projector (LLaVA-1.5: -2)
    feature_select: Literal["auto", "default", "full"] = "auto"  # auto: drop CLS when the tower has one
    image_aspect: Literal["pad", "resize", "crop"] = "pad"       # pad: LLaVA-1.5's pad-to-square
    template: str = "auto"               # conversation template; auto: hf if the tokenizer has one, else vicuna_v1
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0                        # seeds the projector init (and the tiny weights)
    device: str = "cpu"                  # where a preset's random weights are made: cuda for a big shape (a 2.2B
                                         # one took 21 s on an H200, 133 s on its 16 CPU cores)
    overwrite: bool = False

    def __post_init__(self):
        if self.preset is None and not (self.llm and self.vision):
            raise ValueError("give both --llm and --vision, or --preset tiny")
        if self.preset is not None and (self.llm or self.vision):
            raise ValueError("--preset builds its own parts; drop --llm/--vision, or drop --preset")
        if self.device != "cpu" and self.preset is None:
            raise ValueError("--device makes a preset's random weights; loaded parts are read on the CPU")


def main(cfg: BuildConfig) -> Path:
    from llavatune.model.save import check_out_dir

    check_out_dir(cfg.out, cfg.overwrite)
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise LlavatuneError(f"--device {cfg.device}: no CUDA GPU here; leave --device out to build on the CPU.")
    with torch.device(cfg.device):  # the default device of every tensor made below, saved from there
        return _build(cfg)


def _build(cfg: BuildConfig) -> Path:
    from llavatune.model.save import save_pretrained_clean, write_atomically

    projector = compose.Projector.parse(cfg.projector)
    torch.manual_seed(cfg.seed)
    parts = preset_parts(cfg.preset, cfg.dtype) if cfg.preset else load_parts(cfg)
    template = get_template(resolve_template_name(cfg.template, parts.tokenizer, cfg.preset))
    torch.manual_seed(cfg.seed)
    model, processor = compose.assemble(parts, projector, cfg.feature_layer, cfg.feature_select,
                                        cfg.image_aspect, template)

    def write(folder: Path) -> None:
        save_pretrained_clean(model, processor, folder)
        save_run_config(folder, "build", cfg, model={"template": template.name,
                                                       "image_tokens": model.config.image_seq_length})

    write_atomically(cfg.out, cfg.overwrite, write)
    console.print(f"[green]built[/green] {cfg.out}  ({sum(p.numel() for p in model.parameters()):,} parameters, "
                  f"{model.config.image_seq_length} image tokens, template {template.name})")
    return cfg.out


def resolve_template_name(name: str, tokenizer, preset: str | None = None) -> str:
    """auto: a shape preset's published template (its tiny tokenizer has no chat template of the model's own),
    else the tokenizer's chat template, else vicuna_v1."""
    from llavatune.model import shapes

    if name != "auto":
        return name
    if preset in shapes.SHAPES:
        return shapes.TEMPLATES[shapes.SHAPES[preset][0]]
    return "hf" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"


def load_parts(cfg: BuildConfig) -> compose.Parts:
    from llavatune.model.load import DTYPES

    dtype = None if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    with console.status(f"loading vision encoder {cfg.vision}"):  # first: a wrong --vision is said in seconds,
        tower, mean, std = compose.load_vision(cfg.vision, dtype)  # not after a 7B LLM has loaded
    with console.status(f"loading LLM {cfg.llm}"):
        llm, tokenizer = compose.load_llm(cfg.llm, dtype)
    if next(tower.parameters()).dtype != next(llm.parameters()).dtype:
        tower = tower.to(next(llm.parameters()).dtype)
    return compose.Parts(llm, tokenizer, tower, mean, std)


def preset_parts(preset: str, dtype: str = "auto") -> compose.Parts:
    """tiny: Llama-style LLM + CLIP; tiny-qwen: Qwen2-style LLM (no bos, ChatML) + SigLIP; a shape name: its
    published LLM and vision configs, random weights, the tiny tokenizer of the LLM's family (ids below the
    shape's vocabulary, which is kept)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from llavatune.model import shapes
    from llavatune.model.load import DTYPES

    clip_stats = (list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD))
    if preset in shapes.SHAPES:
        llm_id, vision_id = shapes.SHAPES[preset]
        text, vision = shapes.LLM[llm_id](), shapes.VISION[vision_id]()
        tokenizer = tiny.tiny_tokenizer("qwen" if text.model_type == "qwen2" else "llama")
        mean, std = clip_stats
    elif preset in ("tiny", "tiny-qwen"):
        qwen = preset == "tiny-qwen"
        tokenizer = tiny.tiny_tokenizer("qwen" if qwen else "llama")
        text = tiny.tiny_llm_config("qwen2" if qwen else "llama", len(tokenizer), tokenizer)
        vision = tiny.tiny_vision_config("siglip" if qwen else "clip")
        mean, std = ([0.5] * 3, [0.5] * 3) if qwen else clip_stats
    else:
        raise LlavatuneError(f"unknown preset '{preset}': choose tiny, tiny-qwen or a shape "
                             f"({', '.join(shapes.SHAPES)}).")
    kwargs = {} if dtype == "auto" else {"dtype": DTYPES[dtype]}
    llm = AutoModelForCausalLM.from_config(text, **kwargs)
    tower = AutoModel.from_config(vision, **kwargs)
    return compose.Parts(llm, tokenizer, tower, mean, std)
