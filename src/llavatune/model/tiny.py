"""Tiny random-init parts, built offline in seconds: tokenizers, LLM and vision configs.

The `tiny` preset, the demo and the tests use these instead of hub downloads. Two tokenizer styles cover the
cases that break LLaVA stacks: Llama-like (a bos token, `</s>` as eos, no pad) and Qwen-like (no bos, ChatML
specials, its own chat template, no pad).
"""

from __future__ import annotations

import json
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

LLM_FAMILIES = ("llama", "qwen2", "mistral", "phi3", "gemma")

# A small fixed corpus: enough words for the synthetic data, the templates and the README examples.
_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT: Human: Assistant: system user
What is in the image? Describe the image. How many shapes are there? What colour is the shape? Which shape
is it? Where is the shape? Is there a defect? Answer with one word. The image shows a red circle on a white
background. There are two blue squares and three green triangles. yellow purple orange black white grey gray
red green blue circle square triangle star ring cross left right top bottom center middle one two three four
five six seven eight nine ten zero yes no OK NG defect scratch dent crack clean part good bad
Answer the questions. You are a helpful assistant. Hello, how are you? I am fine, thank you.
the a an of and or in on at to is are was were it this that with for from by as be not
0 1 2 3 4 5 6 7 8 9 10 . , ? ! : ; ' " ( ) [ ] - _ / \\ # * + = < > @ % & $
"""

LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_tokenizer(style: str = "llama", vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Deterministic, offline tokenizers trained on a fixed corpus.

    llama: SentencePiece-like (Unigram + Metaspace '▁', a bos token, `</s>` eos, unknown characters -> <unk>);
    qwen: byte-level BPE (no bos, ChatML specials, its own chat template; encodes any text)."""
    if style == "llama":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=LLAMA_SPECIALS, unk_token="<unk>",
                                          initial_alphabet=list(string.printable), show_progress=False)
        tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
        tok.model = _canonical_unigram(tok)
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if style != "qwen":
        raise ValueError(f"tokenizer style must be 'llama' or 'qwen', got {style!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def _canonical_unigram(tok: Tokenizer) -> models.Unigram:
    """The trained Unigram with scores rounded to 0.01 and pieces in a fixed order (specials, then by score
    and text). The trainer sums floats in hash-map order, which changes from process to process, and gives the
    characters it never saw scores in that order too: the same corpus gave different token ids in different
    runs, and the demo's numbers moved with them. Rounding leaves the corpus's segmentation unchanged."""
    vocab = json.loads(tok.to_str())["model"]["vocab"]                       # [[piece, score], ...]
    rest = sorted(((piece, round(score, 2)) for piece, score in vocab if piece not in LLAMA_SPECIALS),
                  key=lambda item: (-item[1], item[0]))
    return models.Unigram([*((piece, 0.0) for piece in LLAMA_SPECIALS), *rest],
                          unk_id=LLAMA_SPECIALS.index("<unk>"), byte_fallback=False)


def tiny_llm_config(family: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast):
    """A 2-layer, 64-wide decoder of one of LLM_FAMILIES (qwen2 and gemma tie their embeddings).

    initializer_range is 0.2, not the usual 0.02: with 0.02 a random 64-wide LLM emits near-uniform logits
    (|lm_head row| x |normed hidden| ~ 1) that no LoRA can sharpen while lm_head stays frozen, so LoRA
    could never learn on the tiny model; pretrained LLMs do not have this problem."""
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=None)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**common, tie_word_embeddings=False)
    if family == "phi3":
        return Phi3Config(**common, tie_word_embeddings=False)
    if family == "gemma":
        return GemmaConfig(**common, head_dim=16, tie_word_embeddings=True)
    raise ValueError(f"tiny LLM family must be one of {', '.join(LLM_FAMILIES)}, got {family!r}")


def tiny_vision_config(family: str = "clip", image_size: int = 32, patch_size: int = 8):
    """A 2-layer, 32-wide ViT: (image_size / patch_size)^2 patches (+ CLS for CLIP)."""
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size, num_channels=3)
    if family == "clip":
        return CLIPVisionConfig(**common, projection_dim=32)
    if family == "siglip":
        return SiglipVisionConfig(**common)
    raise ValueError(f"tiny vision family must be 'clip' or 'siglip', got {family!r}")
