"""InternLM2 read as Llama: same logits as the Llama it was packed from, ChatML specials whole, a built
LLaVA that plain transformers loads, and xtuner LoRA on the packed wqkv landing on the right heads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, LlamaForCausalLM, LlavaForConditionalGeneration

from llavatune.build import BuildConfig
from llavatune.build import main as build
from llavatune.convert import ConvertConfig
from llavatune.convert import main as convert
from llavatune.errors import LlavatuneError
from llavatune.model import compose, internlm2


def test_internlm2_loads_as_the_llama_it_was_packed_from(tiny_parts_dir):
    folder = tiny_parts_dir / "llm-internlm2"
    assert internlm2.is_internlm2(str(folder)) and not internlm2.is_internlm2(str(tiny_parts_dir / "llm-llama"))
    model, tok = compose.load_llm(str(folder), None)
    ref = LlamaForCausalLM.from_pretrained(f"{folder}-llama").eval()
    ids = tok("<|im_start|>user\nWhat colour is the shape?<|im_end|>\n", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[0])[1] == "<|im_start|>" and "<|im_end|>" in tok.convert_ids_to_tokens(ids[0])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert model.config.rope_parameters["rope_theta"] == 1e6


def test_built_internlm2_llava_loads_with_plain_transformers(tiny_parts_dir, tmp_path):
    out = build(BuildConfig(out=tmp_path / "m", llm=str(tiny_parts_dir / "llm-internlm2"),
                            vision=str(tiny_parts_dir / "vision-clip"), template="internlm2_chat"))
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert model.config.text_config.model_type == "llama"
    processor = AutoProcessor.from_pretrained(out)
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in prompt
    ref = LlamaForCausalLM.from_pretrained(tiny_parts_dir / "llm-internlm2-llama")
    lm = model.model.language_model.state_dict()
    assert torch.equal(lm["layers.1.self_attn.k_proj.weight"], ref.state_dict()["model.layers.1.self_attn.k_proj.weight"])


def test_xtuner_lora_on_packed_wqkv_lands_on_the_right_head(tiny_parts_dir, tmp_path):
    """A LoRA delta on the rows of group 1's value head of wqkv (4 query heads over 2 key/value heads of 16:
    group 1 spans rows 64..127, its value head rows 112..127) must change v_proj rows 16..31 and nothing else."""
    from test_convert import projector_weights

    g = torch.Generator().manual_seed(0)
    r, alpha = 2, 8.0
    a, b = torch.randn(r, 64, generator=g), torch.zeros(128, r)
    b[112:128] = torch.randn(16, r, generator=g)
    prefix = "llm.base_model.model.model.layers.0."
    state = {f"{prefix}attention.wqkv.lora_A.default.weight": a, f"{prefix}attention.wqkv.lora_B.default.weight": b}
    state.update({k.replace("model.mm_projector.", "projector.model."): v for k, v in projector_weights("mlp2x_gelu").items()})
    pth = tmp_path / "iter_10.pth"
    torch.save({"state_dict": state}, pth)
    out = convert(ConvertConfig(src=pth, dst=tmp_path / "hf", model_base=str(tiny_parts_dir / "llm-internlm2"),
                                vision=str(tiny_parts_dir / "vision-clip"), lora_alpha=alpha, template="internlm2_chat"))
    lm = LlavaForConditionalGeneration.from_pretrained(out).model.language_model.state_dict()
    ref = LlamaForCausalLM.from_pretrained(tiny_parts_dir / "llm-internlm2-llama").state_dict()
    expected_v = ref["model.layers.0.self_attn.v_proj.weight"].clone()
    expected_v[16:32] += alpha / r * b[112:128] @ a
    assert torch.allclose(lm["layers.0.self_attn.v_proj.weight"], expected_v, atol=1e-6)
    assert not torch.equal(lm["layers.0.self_attn.v_proj.weight"], ref["model.layers.0.self_attn.v_proj.weight"])
    for name in ("q_proj", "k_proj"):
        assert torch.equal(lm[f"layers.0.self_attn.{name}.weight"], ref[f"model.layers.0.self_attn.{name}.weight"])


def test_internlm2_config_maps_rope_scaling_and_refuses_biases():
    config = internlm2.llama_config({"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e6,
                                     "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    with pytest.raises(LlavatuneError, match="biases"):
        internlm2.llama_config({"model_type": "internlm2", "bias": True, "hidden_size": 64})


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_tokenizer_splits_like_sentencepiece(tmp_path, dummy_prefix):
    """InternLM2's own tokenizer is SentencePiece run on the text between special tokens; ours must give the
    same ids, whichever add_dummy_prefix the model was trained with."""
    import re

    import sentencepiece as spm
    from conftest import sentencepiece_bpe

    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_bpe(dummy_prefix))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tok = internlm2.tokenizer(tmp_path)
    texts = ["What colour is the shape?", "Hello,  two  spaces\nand a newline", " leading space", "Zebra 42 ü",
             "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\nA red circle.<|im_end|>"]
    for text in texts:
        chunks = [c for c in re.split(r"(<\|im_start\|>|<\|im_end\|>)", text) if c]
        expected = [sp.bos_id()] + [i for c in chunks for i in ([sp.piece_to_id(c)] if c.startswith("<|") else sp.encode(c))]
        assert tok(text).input_ids == expected, text
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == sp.decode(sp.encode(text)) or "<|" in text
