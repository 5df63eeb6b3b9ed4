"""Conversation -> (input_ids, labels) for training.

The whole rendered text is tokenized once; a token is supervised when the last character it covers lies in
a supervised segment (an assistant reply with its end-of-turn text). Labels therefore come from the very ids
the model sees: no piecewise re-tokenization whose lengths may not add up (the cause of LLaVA's
"tokenization mismatch" warnings that zero whole samples).

Each `<image>` token is then expanded to the number of features the vision tower yields; truncation to
`max_length` never cuts into those, and a sample that cannot keep all its image tokens, or keeps no
supervised token, is dropped with a reason instead of being trained on silently.
"""

from __future__ import annotations

import dataclasses

from llavatune.data.templates import Template, Turn, segments

IGNORE_INDEX = -100


@dataclasses.dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    n_images: int

    @property
    def n_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclasses.dataclass
class Dropped:
    reason: str   # a short category, counted in reports
    detail: str   # numbers for the user


def supervised_mask(segs: list[tuple[str, bool]]) -> tuple[str, bytearray]:
    """(text, one byte per character: 1 where the character belongs to a supervised segment).

    A supervised span also takes the spaces right before it ("ASSISTANT: yellow"): SentencePiece-style
    tokenizers may emit that space as a token of its own ('▁', 'yellow'), and a model that is never taught
    to emit it cannot start the reply."""
    text, mask = [], bytearray()
    for seg, sup in segs:
        text.append(seg)
        mask += (b"\x01" if sup else b"\x00") * len(seg)
    joined = "".join(text)
    for i in range(len(mask) - 1, 0, -1):
        if mask[i] and not mask[i - 1] and joined[i - 1] == " ":
            mask[i - 1] = 1
    return joined, mask


def tokenize_turns(turns: list[Turn], template: Template, tokenizer, image_token_id: int,
                   image_seq_length: int, max_length: int) -> Tokenized | Dropped:
    text, mask = supervised_mask(segments(template, turns, tokenizer=tokenizer))
    # The hf style's text already holds the tokenizer's own bos (its chat template writes it).
    add_special = template.style != "hf"
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids, labels = [], []
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if token == image_token_id:
            ids += [image_token_id] * image_seq_length
            labels += [IGNORE_INDEX] * image_seq_length
            continue
        ids.append(token)
        labels.append(token if end > start and mask[end - 1] else IGNORE_INDEX)
    n_images = enc["input_ids"].count(image_token_id)
    return truncate(Tokenized(ids, labels, n_images), image_token_id, max_length)


def truncate(sample: Tokenized, image_token_id: int, max_length: int) -> Tokenized | Dropped:
    n = len(sample.input_ids)
    if n > max_length:
        last_image = max((i for i, t in enumerate(sample.input_ids) if t == image_token_id), default=-1)
        if last_image >= max_length:
            return Dropped("image tokens do not fit",
                           f"{n} tokens with images ending at {last_image + 1} > max_length {max_length}")
        sample = Tokenized(sample.input_ids[:max_length], sample.labels[:max_length], sample.n_images)
    if sample.n_supervised == 0:
        return Dropped("no supervised tokens",
                       "empty assistant replies" if n <= max_length else f"all replies lie past max_length {max_length}")
    return sample
