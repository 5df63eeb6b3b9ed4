"""What an answer reports besides its text: token counts and why it ended (the OpenAI API's usage and
finish_reason), for batched and streamed generation."""

from __future__ import annotations

import types

import pytest
import torch

import llavatune
from llavatune.inference.generate import GenerationConfig, answers, encode, to_answers


def test_token_counts_and_finish_reasons_of_a_padded_batch(tiny_model_dir):
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("red blue"))[:2]
    stop = tokenizer("###", add_special_tokens=False)["input_ids"]
    prompt = [[pad, 5, 6], [7, 8, 9], [pad, pad, 9]]  # left-padded prompts of 2, 3 and 1 tokens
    new = [[a, eos, pad, pad, pad],                   # ended by its end of turn: 2 tokens
           [a, b, a, b, a],                           # ran out of max_new_tokens: 5
           [a, *stop, *[pad] * (4 - len(stop))]]      # ended by a stop string
    out = torch.tensor([p + n for p, n in zip(prompt, new)])
    inputs = {"input_ids": torch.tensor(prompt), "attention_mask": (torch.tensor(prompt) != pad).long()}
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=eos))
    got = to_answers(out, inputs, model, tokenizer, stop=["###"])
    assert [(x.prompt_tokens, x.completion_tokens, x.finish_reason) for x in got] == [
        (2, 2, "stop"), (3, 5, "length"), (1, 1 + len(stop), "stop")]
    assert "###" not in got[2].text and got[0].text == tokenizer.decode([a]).strip()


def test_answers_count_the_prompt_as_the_model_sees_it(tiny_model_dir, rgb_image):
    model = llavatune.load(tiny_model_dir, device="cpu")
    turns = [[("user", "<image>\nWhat colour is the shape?")], [("user", "Hi")]]
    inputs = encode(model.processor, model.template, turns, [[rgb_image], []])
    got = answers(model.model, model.processor, model.template, inputs, GenerationConfig(max_new_tokens=3))
    assert [x.prompt_tokens for x in got] == inputs["attention_mask"].sum(dim=1).tolist()
    assert got[0].prompt_tokens > model.model.config.image_seq_length  # image tokens counted
    possible = {"length": {3}, "stop": {1, 2, 3}}  # the random tiny model may say anything: counts match reasons
    assert all(x.completion_tokens in possible[x.finish_reason] for x in got)


@pytest.mark.timeout(60)
def test_a_stream_reports_its_answer_and_raises_a_failed_generation(tiny_model_dir, rgb_image, monkeypatch):
    model = llavatune.load(tiny_model_dir, device="cpu")
    stream = model.stream("What colour is the shape?", images=[rgb_image], max_new_tokens=4)
    pieces = list(stream)
    whole = model.answers(["What colour is the shape?"], [[rgb_image]], max_new_tokens=4)[0]
    assert "".join(pieces) == stream.answer.text and stream.answer.text.strip() == whole.text
    assert (stream.answer.prompt_tokens, stream.answer.completion_tokens, stream.answer.finish_reason) == (
        whole.prompt_tokens, whole.completion_tokens, whole.finish_reason)

    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model.model, "generate", broken)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):  # not a wait without end
        list(model.stream("Hi", max_new_tokens=4))


def test_images_may_be_file_paths_and_any_mode(tiny_model_dir, rgb_image, tmp_path):
    """model.chat(q, images=["photo.jpg"]) reads the file as training does; an RGBA or grey image is made RGB
    first, as training's loader makes it."""
    from llavatune.data.formats import DataError

    model = llavatune.load(tiny_model_dir, device="cpu")
    assert repr(model) == f"Model('{tiny_model_dir}', template='vicuna_v1', device='cpu', dtype=float32)"  # notebook
    rgb_image.save(tmp_path / "photo.png")
    ask = lambda image: model.answers(["<image>\nWhat is it?"], [[image]], max_new_tokens=4)[0]  # noqa: E731
    assert ask(str(tmp_path / "photo.png")) == ask(tmp_path / "photo.png") == ask(rgb_image)
    assert ask(rgb_image.convert("RGBA")) == ask(rgb_image)
    with pytest.raises(DataError, match="nope.png: no such image file"):
        model.chat("What is it?", images=[tmp_path / "nope.png"])


def test_top_p_zero_is_greedy_and_bounds_are_checked(tiny_model_dir):
    """OpenAI's API reads top_p=0 as the top token only: greedy, whatever the temperature (transformers refuses 0)."""
    model = llavatune.load(tiny_model_dir, device="cpu")
    greedy = model.chat("Hi", max_new_tokens=6)
    assert model.chat("Hi", max_new_tokens=6, temperature=1.5, top_p=0.0, seed=1) == greedy
    for bad, said in [({"max_new_tokens": 0}, "max_new_tokens must be above 0"), ({"top_p": 1.2}, "top_p is a share"),
                      ({"temperature": -0.5}, "temperature must be 0 or more")]:
        with pytest.raises(ValueError, match=said):
            GenerationConfig(**bad)
