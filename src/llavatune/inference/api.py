"""The Python API: `llavatune.load(path_or_run)` -> a `Model` that chats, generates in batches and streams.

    import llavatune
    model = llavatune.load("runs/tiny-lora")              # a run, a checkpoint (adapter) or a llava-hf folder
    model.chat("What colour is the shape?", images=[img])  # -> "red" (img: a PIL image or a file path)
    model.generate(["Describe it.", "How many?"], images=[[a], [b]], max_new_tokens=32)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from llavatune.data import images as imagelib
from llavatune.data.formats import IMAGE_TAG
from llavatune.data.templates import Template, get_template
from llavatune.inference.generate import Answer, GenerationConfig, answers, encode, prepare, to_answers
from llavatune.model import load as loadlib
from llavatune.model.meta import template_name

Turns = list[tuple[str, str]]


class Model:
    """A loaded model with its processor and conversation template."""

    def __init__(self, model, processor, template: Template, device: torch.device, name: str, source: Path):
        self.model, self.processor, self.template, self.device, self.name = model, processor, template, device, name
        self.source = source  # the folder the weights (or the adapter) came from

    def __repr__(self) -> str:  # what a notebook shows for `model`
        return (f"Model({str(self.source)!r}, template={self.template.name!r}, device='{self.device}', "
                f"dtype={str(self.model.dtype).removeprefix('torch.')})")

    def generate(self, conversations: list, images: list[list[Image.Image | str | Path]] | None = None,
                 **generation) -> list[str]:
        """Answers for a batch (left-padded: greedy answers equal one-by-one answers). Each conversation is a
        prompt string or a list of {"role", "content"} messages."""
        return [a.text for a in self.answers(conversations, images, **generation)]

    def answers(self, conversations: list, images: list[list[Image.Image | str | Path]] | None = None,
                **generation) -> list[Answer]:
        """generate(), with each answer's token counts and finish reason ("stop" or "length")."""
        images = [_pil(ims) for ims in images] if images else [[] for _ in conversations]
        turns = [as_turns(c, len(ims)) for c, ims in zip(conversations, images)]
        return answers(self.model, self.processor, self.template, encode(self.processor, self.template, turns, images),
                       GenerationConfig(**generation), self.device)

    def chat(self, messages_or_prompt, images: list[Image.Image | str | Path] | None = None, **generation) -> str:
        return self.generate([messages_or_prompt], [list(images or [])], **generation)[0]

    def stream(self, messages_or_prompt, images: list[Image.Image | str | Path] | None = None, **generation) -> Stream:
        """The answer piece by piece as it is generated (iterate it); then `.answer` holds the whole Answer."""
        images = _pil(images or [])
        turns = as_turns(messages_or_prompt, len(images))
        inputs, kwargs, stop = prepare(self.processor, self.template,
                                       encode(self.processor, self.template, [turns], [images]),
                                       GenerationConfig(**generation), self.device)
        return Stream(self.model, self.processor.tokenizer, inputs, kwargs, stop)


def _pil(images) -> list[Image.Image]:
    """RGB PIL images, as training reads them: a path is opened (EXIF-rotated), another mode converted."""
    out = [im if isinstance(im, Image.Image) else imagelib.open_file(im) for im in images]
    return [im if im.mode == "RGB" else im.convert("RGB") for im in out]


class Stream:
    """Iterate for text pieces, as generate() runs in a thread. A failed generation ends the pieces and raises
    its error here (the streamer would otherwise wait forever for a thread that is gone, and a server with it)."""

    def __init__(self, model, tokenizer, inputs: dict, kwargs: dict, stop: list[str]):
        self.model, self.tokenizer, self.inputs, self.kwargs, self.stop = model, tokenizer, inputs, kwargs, stop
        self.answer: Answer | None = None  # set when the last piece has been taken

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        done: dict = {}

        def run():
            try:
                done["out"] = self.model.generate(**self.inputs, **self.kwargs, streamer=streamer)
            except BaseException as err:  # raised again in the consuming thread, below
                done["error"] = err
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in _until_stop(streamer, self.stop):
            pieces.append(piece)
            yield piece
        thread.join()
        if "error" in done:
            raise done["error"]
        self.answer = to_answers(done["out"], self.inputs, self.model, self.tokenizer, self.stop)[0]
        self.answer.text = "".join(pieces)


def _until_stop(pieces, stop: list[str]) -> Iterator[str]:
    """Pass text through up to the first stop string; hold back a tail that may be a stop string's start."""
    buffer, emitted, stopped = "", 0, False
    hold = max((len(s) for s in stop), default=1) - 1
    for piece in pieces:
        if stopped:
            continue  # drain, so the generating thread can finish
        buffer += piece
        hits = [buffer.find(s) for s in stop if s in buffer]
        end = min(hits) if hits else len(buffer) - hold
        if end > emitted:
            yield buffer[emitted:end]
            emitted = end
        stopped = bool(hits)
    if not stopped and emitted < len(buffer):
        yield buffer[emitted:]


def as_turns(conversation, n_images: int) -> Turns:
    """A prompt string or OpenAI-style messages (string contents) -> (role, text) turns; an image given without
    an <image> tag is placed before the first user text, as LLaVA data does."""
    if isinstance(conversation, str):
        turns = [("user", conversation)]
    else:
        turns = [(m["role"], m["content"]) for m in conversation]
    tags = sum(text.count(IMAGE_TAG) for _, text in turns)
    if n_images and tags == 0:
        first = next(i for i, (role, _) in enumerate(turns) if role == "user")
        turns[first] = ("user", IMAGE_TAG * n_images + "\n" + turns[first][1])
    return turns


def load(path: str | Path, adapter: str | Path | None = None, load_4bit: bool = False, device: str = "auto",
         dtype: str = "auto", template: str | None = None) -> Model:
    """Load a llava-hf folder, a run (its final/ or newest checkpoint) or an adapter checkpoint."""
    dev = loadlib.pick_device(device)
    torch_dtype = (torch.bfloat16 if dev.type == "cuda" else torch.float32) if dtype == "auto" else loadlib.DTYPES[dtype]
    model, processor = loadlib.load(path, adapter=adapter, dtype=torch_dtype, load_4bit=load_4bit, device=str(dev))
    source = loadlib.resolve(adapter or path)
    return Model(model, processor, get_template(template or template_name(source)), dev, Path(path).name, source)
