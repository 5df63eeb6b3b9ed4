"""Architectures of the models the shipped recipes and benchmarks name, as configs (no weights).

`--dry-run` plans a recipe whose model is not on disk from these, and `bench` builds random-weight models of
the same shapes. Numbers are the published config.json values of each model.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2Config

VISION = {
    "openai/clip-vit-large-patch14-336": lambda: CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
}

LLM = {
    "lmsys/vicuna-7b-v1.5": lambda: LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "lmsys/vicuna-13b-v1.5": lambda: LlamaConfig(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "Qwen/Qwen1.5-4B-Chat": lambda: Qwen2Config(
        hidden_size=2560, intermediate_size=6912, num_hidden_layers=40, num_attention_heads=20,
        num_key_value_heads=20, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=False),
    # InternLM2 loads as a Llama-style decoder (model/internlm2.py): GQA 16/8
    "internlm/internlm2-chat-1_8b": lambda: LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=8, vocab_size=92544, max_position_embeddings=32768),
}

TEMPLATES = {  # the template each LLM was tuned with: a random-weight preset prompts its shape the same way
    "lmsys/vicuna-7b-v1.5": "vicuna_v1",
    "lmsys/vicuna-13b-v1.5": "vicuna_v1",
    "Qwen/Qwen1.5-4B-Chat": "hf",  # the (tiny) Qwen tokenizer's ChatML chat template
    "internlm/internlm2-chat-1_8b": "internlm2_chat",
}

LLAVA = {  # llava-hf checkpoints: (LLM, vision) of the table above
    "llava-hf/llava-1.5-7b-hf": ("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"),
    "llava-hf/llava-1.5-13b-hf": ("lmsys/vicuna-13b-v1.5", "openai/clip-vit-large-patch14-336"),
}

SHAPES = {  # short names for recipes (`shape:`) and `bench --shape`
    "llava15-7b": LLAVA["llava-hf/llava-1.5-7b-hf"],
    "llava15-13b": LLAVA["llava-hf/llava-1.5-13b-hf"],
    "qwen15-4b": ("Qwen/Qwen1.5-4B-Chat", "openai/clip-vit-large-patch14-336"),
    "internlm2-1.8b": ("internlm/internlm2-chat-1_8b", "openai/clip-vit-large-patch14-336"),
}


def llava_config(llm: str, vision: str, image_token_index: int | None = None) -> LlavaConfig:
    """A LLaVA-1.5-style config (mlp2x_gelu, layer -2, CLS dropped) for known LLM and vision ids."""
    text, tower = LLM[llm](), VISION[vision]()
    n_image = (tower.image_size // tower.patch_size) ** 2
    image_token = image_token_index if image_token_index is not None else text.vocab_size
    text.vocab_size += 64  # room for <image> and <pad>, padded as llava-hf does (32000 -> 32064)
    return LlavaConfig(text_config=text.to_dict(), vision_config=tower.to_dict(), image_seq_length=n_image,
                       image_token_index=image_token,
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def known(name: str) -> LlavaConfig | None:
    """The config of a known llava-hf id or shape name (or 'tiny', the preset), else None."""
    if name == "tiny":
        return tiny_config()
    pair = SHAPES.get(name) or LLAVA.get(name)
    return llava_config(*pair) if pair else None


def tiny_config() -> LlavaConfig:
    """The `--preset tiny` architecture (Llama-style LLM + CLIP, 16 image tokens)."""
    from llavatune.model.tiny import tiny_llm_config, tiny_tokenizer, tiny_vision_config

    tok = tiny_tokenizer("llama")
    vocab = len(tok) + 2  # + <image>, <pad>
    return LlavaConfig(text_config=tiny_llm_config("llama", vocab, tok).to_dict(),
                       vision_config=tiny_vision_config("clip").to_dict(), image_seq_length=16,
                       image_token_index=len(tok), vision_feature_layer=-2, vision_feature_select_strategy="default")
