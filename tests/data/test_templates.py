"""Templates render byte for byte what LLaVA's get_prompt() / preprocess_plain and xtuner produce, and the
Jinja exported to the processor renders the same text."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llavatune.data.templates import TEMPLATES, get_template, render, segments, to_jinja
from llavatune.errors import LlavatuneError

TWO_ROUNDS = [("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "Color?"), ("assistant", "Black.")]
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
LLAVA_LLAMA2 = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")
HUMAN = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the human's questions.")

# (template, training text, generation prompt for the last answer), written out from the reference sources
EXPECTED = {
    "vicuna_v1": (VICUNA + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT: Black.</s>",
                  VICUNA + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"),
    "llava_v1": (HUMAN + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT: Black.</s>",
                 HUMAN + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"),
    "llava_v0": (HUMAN + "###Human: <image>\nWhat is it?###Assistant: A cat.###Human: Color?###Assistant: Black.###",
           HUMAN + "###Human: <image>\nWhat is it?###Assistant: A cat.###Human: Color?###Assistant:"),
    "llava_llama_2": (
        f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s><s>[INST] Color? "
        "[/INST] Black. </s>",
        f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s><s>[INST] Color? "
        "[/INST]"),
    "mistral_instruct": ("[INST] <image>\nWhat is it? [/INST] A cat. </s>[INST] Color? [/INST] Black. </s>",
                         "[INST] <image>\nWhat is it? [/INST] A cat. </s>[INST] Color? [/INST]"),
    "chatml_direct": (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColor?<|im_end|><|im_start|>assistant\n"
        "Black.<|im_end|>",
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColor?<|im_end|><|im_start|>assistant\n"),
    "internlm2_chat": (
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\nBlack.<|im_end|>",
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n"),
    "qwen_chat": (
        "\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "\n<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\nBlack.<|im_end|>",
        "\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "\n<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n"),
    "llama3_chat": (
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\nA cat.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nColor?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBlack.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\nA cat.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nColor?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_matches_the_reference(name):
    text, prompt = EXPECTED[name]
    assert render(get_template(name), TWO_ROUNDS) == text
    assert render(get_template(name), TWO_ROUNDS, generation_prompt=True) == prompt


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - {"hf"}))
def test_the_image_tag_moves_first_as_llava_preprocesses_it(name):
    """LLaVA's preprocess_multimodal runs before every template: the tag goes first, then a line break, the
    rest stripped. LLaVA-Instruct writes many of its questions with the tag last."""
    tail = [("user", "What is it?\n<image>"), *TWO_ROUNDS[1:2]]
    spaced = [("user", " <image> What is it?  "), *TWO_ROUNDS[1:2]]
    for turns in (tail, spaced):
        assert render(get_template(name), turns) == render(get_template(name), TWO_ROUNDS[:2])
        assert (render(get_template(name), turns, generation_prompt=True)
                == render(get_template(name), TWO_ROUNDS[:2], generation_prompt=True))
    assert render(get_template("vicuna_v1"), [("user", "<image>"), ("assistant", "A cat.")]) == (
        VICUNA + " USER: <image> ASSISTANT: A cat.</s>")  # an image alone: "<image>\n" stripped to "<image>"
    two = [("user", "First <image> then <image>"), ("assistant", "Same.")]  # interleaved: left where they are
    assert "USER: First <image> then <image> ASSISTANT" in render(get_template("vicuna_v1"), two)


def test_aliases_and_mpt():
    assert get_template("v1") is get_template("vicuna_v1")
    mpt = render(get_template("mpt"), TWO_ROUNDS[:2])
    assert mpt == ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant "
                   "gives helpful and honest answers.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
                   "<|im_start|>assistant\nA cat.<|im_end|>")


def test_plain_is_preprocess_plain():
    caption = [("user", "<image>\nDescribe the image briefly."), ("assistant", "a red circle")]
    assert render(get_template("plain"), caption) == "<image>a red circle\n"
    assert render(get_template("plain"), caption, generation_prompt=True) == "<image>\nDescribe the image briefly.\n"
    with pytest.raises(LlavatuneError, match="exactly one user turn"):
        render(get_template("plain"), TWO_ROUNDS)


def test_system_turn_replaces_the_default():
    turns = [("system", "Be brief."), *TWO_ROUNDS[:2]]
    assert render(get_template("vicuna_v1"), turns).startswith("Be brief. USER: ")
    assert render(get_template("internlm2_chat"), turns).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert render(get_template("mistral_instruct"), turns).startswith("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n")


def test_llama_2_empty_reply_prints_nothing():
    # get_prompt() skips a falsy message in the LLAMA_2 style
    assert render(get_template("mistral_instruct"), [("user", "Hi"), ("assistant", "")]) == "[INST] Hi [/INST]"


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - {"hf"}))
def test_supervised_segments_are_the_replies(name):
    turns = TWO_ROUNDS[:2] if name == "plain" else TWO_ROUNDS
    segs = segments(get_template(name), turns)
    supervised = [text for text, sup in segs if sup]
    stop = get_template(name).stop or ""
    replies = ["A cat."] if name == "plain" else ["A cat.", "Black."]
    assert [s.removesuffix("\n").removesuffix(stop).strip() for s in supervised] == replies
    assert "".join(t for t, _ in segs) == render(get_template(name), turns)


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - {"hf", "plain"}))
def test_jinja_renders_like_render(name):
    template = get_template(name)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    jinja = env.from_string(to_jinja(template))
    as_messages = [{"role": r, "content": t} for r, t in TWO_ROUNDS]
    assert jinja.render(messages=as_messages, add_generation_prompt=False) == render(template, TWO_ROUNDS)
    assert (jinja.render(messages=as_messages[:-1], add_generation_prompt=True)
            == render(template, TWO_ROUNDS, generation_prompt=True))
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert jinja.render(messages=parts, add_generation_prompt=True) == render(
        template, [TWO_ROUNDS[0], ("assistant", "x")], generation_prompt=True)
    tail = [{"role": "user", "content": "What is it?\n<image>"}]
    assert jinja.render(messages=tail, add_generation_prompt=True) == render(
        template, [TWO_ROUNDS[0], ("assistant", "x")], generation_prompt=True)


def test_hf_template_uses_the_tokenizer():
    from llavatune.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer("qwen")
    turns = TWO_ROUNDS[:2]
    text = render(get_template("hf"), turns, tokenizer=tok)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is "
                    "it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n")
    assert [t for t, sup in segments(get_template("hf"), turns, tokenizer=tok) if sup] == ["A cat.<|im_end|>"]
    with pytest.raises(LlavatuneError, match="has none"):
        render(get_template("hf"), turns, tokenizer=tiny_tokenizer("llama"))


def test_unknown_template_suggests():
    with pytest.raises(LlavatuneError, match="Did you mean 'vicuna_v1'"):
        get_template("vicuna_v2")
