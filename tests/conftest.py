"""Shared fixtures: tiny models and encoders written to local folders with save_pretrained (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
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


def pack_wqkv(q, k, v, kv_heads: int):
    """InternLM2's packed attention matrix from Llama's q/k/v: per key/value head, its query heads, its key
    head, its value head (the layout of modeling_internlm2's `rearrange(..., "(h gs d)")`)."""
    d, width = k.shape[0] // kv_heads, q.shape[-1]
    groups = [q.reshape(kv_heads, -1, d, width), k.reshape(kv_heads, 1, d, width), v.reshape(kv_heads, 1, d, width)]
    return torch.cat(groups, dim=1).reshape(-1, width)


def sentencepiece_bpe(add_dummy_prefix: bool) -> bytes:
    """A SentencePiece BPE model set up as InternLM2's: byte fallback, text kept as is (newlines too), ChatML
    markers as user-defined symbols."""
    import io

    import sentencepiece as spm

    from llavatune.model.tiny import _CORPUS

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_CORPUS.splitlines() * 4), model_writer=model,
                                   vocab_size=400, model_type="bpe", normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], byte_fallback=True,
                                   minloglevel=2)
    return model.getvalue()


def write_tiny_internlm2(path):
    """A tiny InternLM2 hub-style folder (remote-code config, InternLM2 weight names, SentencePiece
    tokenizer.model with ChatML specials) made from a tiny Llama, saved beside it as `<path>-llama`."""
    import json

    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True)
    (path / "tokenizer.model").write_bytes(sentencepiece_bpe(add_dummy_prefix=True))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True}))
    torch.manual_seed(0)
    shape = dict(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.2,
                 bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    llama = LlamaForCausalLM(LlamaConfig(**shape, rope_theta=1e6))
    llama.save_pretrained(f"{path}-llama")
    w, state = llama.state_dict(), {}
    state["model.tok_embeddings.weight"], state["output.weight"] = w["model.embed_tokens.weight"], w["lm_head.weight"]
    state["model.norm.weight"] = w["model.norm.weight"]
    for i in range(shape["num_hidden_layers"]):
        old, new = f"model.layers.{i}.", f"model.layers.{i}."
        state[new + "attention.wqkv.weight"] = pack_wqkv(*(w[f"{old}self_attn.{x}_proj.weight"] for x in "qkv"), 2)
        for a, b in [("self_attn.o_proj", "attention.wo"), ("mlp.gate_proj", "feed_forward.w1"),
                     ("mlp.up_proj", "feed_forward.w3"), ("mlp.down_proj", "feed_forward.w2"),
                     ("input_layernorm", "attention_norm"), ("post_attention_layernorm", "ffn_norm")]:
            state[f"{new}{b}.weight"] = w[f"{old}{a}.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({
        **shape, "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "hidden_act": "silu", "rope_theta": 1e6, "rope_scaling": None, "torch_dtype": "float32", "attn_implementation": "eager"}))
    return path


@pytest.fixture(scope="session")
def tiny_parts_dir(tmp_path_factory):
    """Folders of tiny LLMs (each family) and encoders (CLIP, SigLIP, full CLIP), written once per session."""
    from llavatune.model.tiny import LLM_FAMILIES

    root = tmp_path_factory.mktemp("parts")
    for family in LLM_FAMILIES:
        write_tiny_llm(root / f"llm-{family}", family)
    write_tiny_internlm2(root / "llm-internlm2")
    for family in ("clip", "siglip"):
        write_tiny_vision(root / f"vision-{family}", family)
    write_tiny_vision(root / "vision-clip-dual", "clip", dual=True)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`llavatune build --preset tiny` output, built once per session."""
    from llavatune.build import BuildConfig, main

    return main(BuildConfig(out=tmp_path_factory.mktemp("models") / "tiny", preset="tiny"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's main command, `make demo`, for real and once per session: (its folder, seconds, the
    before/after line it prints last, what it wrote to stderr). test_demo checks its numbers; the docs that run the demo (`make demo`,
    `llavatune demo --out ...`) get a copy of its folder instead of a rerun."""
    import json
    import subprocess
    import time

    out = tmp_path_factory.mktemp("demo") / "demo"
    started = time.perf_counter()
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "demo", f"OUT={out}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, time.perf_counter() - started, json.loads(result.stdout.splitlines()[-1]), result.stderr


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
