"""<image> and pad tokens: pad is never eos, new embedding rows start at the mean."""

import torch
from transformers import AutoModelForCausalLM

from llavatune.model.tiny import tiny_llm_config, tiny_tokenizer
from llavatune.model.tokens import IMAGE_TOKEN, add_llava_tokens


def test_qwen_style_tokenizer_gets_its_own_pad_and_image_token():
    tok = tiny_tokenizer("qwen")
    assert tok.bos_token is None and tok.pad_token is None
    llm = AutoModelForCausalLM.from_config(tiny_llm_config("qwen2", len(tok), tok))
    n = len(tok)
    tok, image_id = add_llava_tokens(tok, llm)
    assert tok.pad_token_id != tok.eos_token_id
    assert image_id == tok.convert_tokens_to_ids(IMAGE_TOKEN) and image_id >= n
    assert tok(f"a {IMAGE_TOKEN} b", add_special_tokens=False).input_ids.count(image_id) == 1
    emb = llm.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) == n + 2
    assert torch.allclose(emb[n:], emb[:n].mean(0).expand(2, -1))


def test_existing_pad_that_equals_eos_is_replaced():
    tok = tiny_tokenizer("llama")
    tok.pad_token = tok.eos_token
    llm = AutoModelForCausalLM.from_config(tiny_llm_config("llama", len(tok), tok))
    tok, _ = add_llava_tokens(tok, llm)
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
