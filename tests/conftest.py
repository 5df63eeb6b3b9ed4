"""Shared fixtures: tiny models and encoders written to local folders with save_pretrained (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_tiny_llm(path, family: str):
    from transformers import AutoModelForCausalLM

    from llavatune.model.tiny import tiny_llm_config, tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer("qwen" if family == "qwen2" else "llama")
    AutoModelForCausalLM.from_config(tiny_llm_config(family, len(tok), tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tiny_vision(path, family: str, dual: bool = False):
    """A vision-only encoder folder, or (dual=True) a full CLIP/SigLIP model with its text half."""
    from transformers import AutoModel, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from llavatune.model.tiny import tiny_vision_config

    torch.manual_seed(0)
    vision = tiny_vision_config(family)
    if not dual:
        AutoModel.from_config(vision).save_pretrained(path)
        return path
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    if family == "clip":
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(path)
    else:
        SiglipModel(SiglipConfig(text_config=text, vision_config=vision.to_dict())).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_parts_dir(tmp_path_factory):
    """Folders of tiny LLMs (each family) and encoders (CLIP, SigLIP, full CLIP), written once per session."""
    from llavatune.model.tiny import LLM_FAMILIES

    root = tmp_path_factory.mktemp("parts")
    for family in LLM_FAMILIES:
        write_tiny_llm(root / f"llm-{family}", family)
    for family in ("clip", "siglip"):
        write_tiny_vision(root / f"vision-{family}", family)
    write_tiny_vision(root / "vision-clip-dual", "clip", dual=True)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`llavatune build --preset tiny` output, built once per session."""
    from llavatune.build import BuildConfig, main

    return main(BuildConfig(out=tmp_path_factory.mktemp("models") / "tiny", preset="tiny"))


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """40 synthetic shape images with captions (stage 1) and colour/shape questions (stage 2)."""
    from llavatune.data.synth import SynthConfig, main

    return main(SynthConfig(out=tmp_path_factory.mktemp("data") / "shapes", n=40))


def train_config(model, data_dir, out, *overrides):
    """A TrainConfig for the tiny model on the synthetic data; `overrides` are key=value strings."""
    from llavatune.config import load
    from llavatune.train import TrainConfig

    return load(TrainConfig, None, [f"model={model}", f"data={data_dir / 'qa.json'}", f"images={data_dir}",
                                    f"out={out}", "batch_size=4", "report_to=[]", "lr=1e-3", *overrides])
