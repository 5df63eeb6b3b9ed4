"""Labels come from the ids the model sees: for every template and both tokenizer styles, the supervised tokens
decode exactly to the assistant replies with their end-of-turn text."""

from __future__ import annotations

import pytest

from llavatune.data.templates import TEMPLATES, get_template, segments
from llavatune.data.tokenize import IGNORE_INDEX, Dropped, Tokenized, tokenize_turns
from llavatune.model.tiny import tiny_tokenizer
from llavatune.model.tokens import IMAGE_TOKEN

TURNS = [("user", "<image>\nWhat colour is the shape?"), ("assistant", "The shape is red."),
         ("user", "How many shapes are there?"), ("assistant", "three")]
N_IMAGE = 5


def tokenizer(style):
    tok = tiny_tokenizer(style)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    return tok


def spans(labels):
    """Contiguous runs of supervised positions."""
    runs, current = [], []
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("style", ["llama", "qwen"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_supervised_tokens_decode_to_the_replies(style, name):
    tok = tokenizer(style)
    if name == "hf" and not tok.chat_template:
        pytest.skip("the llama-style tiny tokenizer has no chat template")
    turns = TURNS[:2] if name == "plain" else TURNS
    template = get_template(name)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    sample = tokenize_turns(turns, template, tok, image_id, N_IMAGE, max_length=4096)
    assert isinstance(sample, Tokenized)
    expected = [text.lstrip() for text, sup in segments(template, turns, tokenizer=tok) if sup]
    decoded = [tok.decode([sample.input_ids[i] for i in run]).lstrip() for run in spans(sample.labels)]
    assert decoded == expected
    # the image placeholder is expanded, never supervised
    assert sample.input_ids.count(image_id) == N_IMAGE and sample.n_images == 1
    assert all(sample.labels[i] == IGNORE_INDEX for i, t in enumerate(sample.input_ids) if t == image_id)
    if style == "llama" and name != "hf":
        assert sample.input_ids[0] == tok.bos_token_id and sample.labels[0] == IGNORE_INDEX


def test_truncation_never_cuts_image_tokens():
    tok = tokenizer("llama")
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    template = get_template("vicuna_v1")
    full = tokenize_turns(TURNS, template, tok, image_id, 50, max_length=4096)
    assert isinstance(full, Tokenized)
    first_image = full.input_ids.index(image_id)
    dropped = tokenize_turns(TURNS, template, tok, image_id, 50, max_length=first_image + 10)
    assert isinstance(dropped, Dropped) and dropped.reason == "image tokens do not fit"
    # cutting after the image but inside the first reply keeps what fits
    first_label = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    cut = tokenize_turns(TURNS, template, tok, image_id, 50, max_length=first_label + 2)
    assert isinstance(cut, Tokenized) and len(cut.input_ids) == first_label + 2 and cut.n_supervised == 2
    # cutting before any reply leaves nothing to learn
    none_left = tokenize_turns(TURNS, template, tok, image_id, 50, max_length=first_label)
    assert isinstance(none_left, Dropped) and none_left.reason == "no supervised tokens"


def test_empty_reply_is_dropped():
    tok = tokenizer("qwen")
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    out = tokenize_turns([("user", "hi"), ("assistant", "")], get_template("vicuna_v1"), tok, image_id, 5, 100)
    assert isinstance(out, Dropped) and out.reason == "no supervised tokens"
