"""Compose a llava-hf model from a causal LM and a vision encoder, and load those parts from hub ids or folders.

Data flow: (LLM, tokenizer) + (vision tower, pixel statistics) -> tokens added, embeddings resized ->
LlavaConfig -> LlavaForConditionalGeneration whose LLM and tower are the loaded modules (no copy) and whose
projector is fresh -> LlavaProcessor whose `<image>` expansion equals the tower's feature count.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from llavatune.data.templates import Template, to_jinja
from llavatune.errors import LlavatuneError
from llavatune.model import internlm2
from llavatune.model.tokens import add_llava_tokens

@dataclasses.dataclass(frozen=True)
class Projector:
    """A projector spec: 'linear' or 'mlp2x_gelu' (Linear -> GELU -> Linear, LLaVA-1.5)."""
    name: str
    act: str          # LlavaConfig.projector_hidden_act
    identity_out: bool  # 'linear' keeps linear_2 at the identity, so the map is one Linear

    @staticmethod
    def parse(name: str) -> "Projector":
        if name == "linear":
            return Projector(name, "linear", True)
        match = re.fullmatch(r"mlp(\d+)x_gelu", name)
        if match and int(match.group(1)) == 2:
            return Projector(name, "gelu", False)
        if match:
            raise LlavatuneError(
                f"projector '{name}' has {match.group(1)} linear layers; the llava-hf format "
                "(LlavaForConditionalGeneration) holds exactly 2, so only 'linear' and 'mlp2x_gelu' can be "
                "saved in a checkpoint that plain transformers loads.")
        raise LlavatuneError(f"unknown projector '{name}'. Choose 'mlp2x_gelu' (LLaVA-1.5, default) or 'linear'.")


@dataclasses.dataclass
class Parts:
    """What a build starts from; `load_parts` fills it from hub ids or folders, the tiny preset in memory."""
    llm: PreTrainedModel
    tokenizer: object
    vision: PreTrainedModel
    pixel_mean: list[float]
    pixel_std: list[float]


def load_llm(ref: str, dtype: torch.dtype | None,
             edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> tuple[PreTrainedModel, object]:
    """(causal LM, tokenizer) of a folder or hub id; InternLM2's remote-code models are read as Llama.
    `edit` may change the weights in place before they are used (names as in the checkpoint)."""
    if internlm2.is_internlm2(ref):
        return internlm2.load(ref, dtype, edit)
    config = _load_config(ref, "--llm")
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise LlavatuneError(f"--llm {ref}: its config is '{config.model_type}', which is not a causal language "
                             "model (expected for example llama, qwen2, mistral, phi3, gemma, internlm2).")
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype or "auto")
    if edit is not None:
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        edit(weights)
        model.load_state_dict(weights)
    return model, AutoTokenizer.from_pretrained(ref)


def load_vision(ref: str, dtype: torch.dtype | None) -> tuple[PreTrainedModel, list[float], list[float]]:
    config = _load_config(ref, "--vision")
    vision_config = _vision_config(config, ref)
    cls = MODEL_MAPPING[type(vision_config)]
    tower = cls.from_pretrained(ref, config=vision_config, dtype=dtype or "auto")
    mean, std = _pixel_stats(ref, vision_config.model_type)
    return tower, mean, std


def _load_config(ref: str, flag: str):
    try:
        return AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise LlavatuneError(f"{flag} {ref}: cannot read a model config there ({_first_line(err)}). Give a local "
                             "folder with config.json or a hub id that is reachable (or cached offline).") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _vision_config(config, ref: str):
    """A vision encoder config from a vision-only config or a dual-encoder one (CLIP, SigLIP)."""
    if config.model_type.endswith("_vision_model"):
        return config
    sub = getattr(config, "vision_config", None)
    if sub is not None and hasattr(sub, "patch_size") and config.model_type in ("clip", "siglip", "siglip2"):
        return sub
    raise LlavatuneError(f"--vision {ref}: its config is '{config.model_type}', not a vision encoder "
                         "(expected a CLIP or SigLIP model, or their vision-only parts).")


def _pixel_stats(ref: str, model_type: str) -> tuple[list[float], list[float]]:
    """Normalisation the encoder was trained with: from its preprocessor_config.json, else the family's default.
    The file is read as a dict, not through AutoImageProcessor, which transformers 5.17 refuses without
    torchvision."""
    try:
        stats, _ = ImageProcessingMixin.get_image_processor_dict(ref)
        return list(stats["image_mean"]), list(stats["image_std"])
    except (OSError, ValueError, KeyError, TypeError):
        if model_type.startswith("clip"):
            return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
        return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def extra_tokens(tower: PreTrainedModel) -> int:
    """Tokens the tower emits besides its patches: 1 for CLIP (CLS), 0 for SigLIP."""
    emb = tower.embeddings
    return int(emb.num_positions - emb.num_patches)


def feature_strategy(choice: str, tower: PreTrainedModel) -> str:
    """'auto' drops the CLS token when there is one (LLaVA-1.5) and keeps every token otherwise (SigLIP)."""
    if choice != "auto":
        return choice
    return "default" if extra_tokens(tower) == 1 else "full"


def image_token_count(tower: PreTrainedModel, strategy: str) -> int:
    cfg = tower.config
    patches = (cfg.image_size // cfg.patch_size) ** 2
    return patches + extra_tokens(tower) - (1 if strategy == "default" else 0)


def assemble(parts: Parts, projector: Projector, feature_layer: int, feature_select: str, image_aspect: str,
             template: Template) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Join the parts into a llava-hf model and its processor (the LLM and tower modules are reused as-is)."""
    llm, tower = parts.llm, parts.vision
    tokenizer, image_id = add_llava_tokens(parts.tokenizer, llm)
    strategy = feature_strategy(feature_select, tower)
    n_image = image_token_count(tower, strategy)
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=llm.config.to_dict(), image_token_index=image_id,
        image_seq_length=n_image, projector_hidden_act=projector.act, vision_feature_select_strategy=strategy,
        vision_feature_layer=feature_layer, tie_word_embeddings=bool(llm.config.tie_word_embeddings))
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = _compose(config, llm, tower, projector)
    model.generation_config = llm.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=_image_processor(tower.config.image_size, image_aspect, parts.pixel_mean, parts.pixel_std),
        tokenizer=tokenizer, patch_size=tower.config.patch_size, vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens(tower), chat_template=to_jinja(template, tokenizer))
    return model, processor


def _compose(config: LlavaConfig, llm, tower, projector: Projector) -> LlavaForConditionalGeneration:
    dtype = next(llm.parameters()).dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.language_model = getattr(llm, llm.base_model_prefix)  # LlamaModel, Qwen2Model, ...
    model.lm_head = llm.get_output_embeddings()  # tied LLMs share it with the input embeddings already
    model.model.vision_tower = tower
    model.model.multi_modal_projector = new_projector(config, projector).to(dtype)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise RuntimeError(f"internal: {name} was not filled while composing the model")
    return model


def new_projector(config: LlavaConfig, projector: Projector) -> LlavaMultiModalProjector:
    """A freshly initialised projector (torch's default Linear init, as in LLaVA)."""
    module = LlavaMultiModalProjector(config)
    if projector.identity_out:
        with torch.no_grad():
            module.linear_2.weight.copy_(torch.eye(module.linear_2.out_features))
            module.linear_2.bias.zero_()
    return module


def _image_processor(size: int, aspect: str, mean: list[float], std: list[float]) -> LlavaImageProcessorPil:
    """pad: LLaVA-1.5 (pad to square with the mean colour, then resize); crop: shortest edge + centre crop
    (CLIP's own); resize: squash to size x size."""
    geometry = (dict(size={"height": size, "width": size}, do_center_crop=False) if aspect == "resize" else
                dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True))
    return LlavaImageProcessorPil(do_pad=aspect == "pad", image_mean=mean, image_std=std, resample=3, **geometry)
