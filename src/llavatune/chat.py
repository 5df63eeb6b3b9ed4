"""Verb `chat`: talk to a model in the terminal, with images; streamed answers.

    llavatune chat runs/tiny-lora --image photo.png
    llavatune chat runs/tiny-lora --image https://example.com/photo.jpg
    llavatune chat models/tiny-tuned --image photo.png --prompt "What colour is the shape?"

In the conversation: /image PATH (or an http(s) URL) attaches an image to the next question, /reset starts over,
/quit leaves.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from llavatune.data import images as imagelib
from llavatune.errors import LlavatuneError
from llavatune.inference.generate import GenerationConfig


@dataclasses.dataclass
class ChatConfig:
    model: Path
    adapter: Path | None = None
    image: str | None = None         # an image file or http(s) URL for the first question
    prompt: str | None = None        # answer this once and exit (for scripts)
    load_4bit: bool = False
    template: str | None = None      # conversation template (default: the model's own)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):  # generation's bounds, said before the model loads
        GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


COMMANDS = "/image PATH or URL, /reset, /quit"


def main(cfg: ChatConfig, stdin=None, stdout=None) -> None:
    from llavatune.inference.api import load

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model = load(cfg.model, adapter=cfg.adapter, load_4bit=cfg.load_4bit, template=cfg.template)
    generation = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    pending = [imagelib.open_file(cfg.image)] if cfg.image else []
    if cfg.prompt is not None:
        stdout.write(model.chat(cfg.prompt, images=pending, **generation) + "\n")
        return
    history: list[dict] = []
    images: list = []
    stdout.write(f"chatting with {model.name} (template {model.template.name}); {COMMANDS}\n")
    for line in stdin:
        line = line.strip()
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history, images, pending = [], [], []
            stdout.write("(conversation reset)\n")
            continue
        if line.startswith("/image "):
            try:  # a mistyped path is said and the conversation goes on
                pending.append(imagelib.open_file(line[7:].strip()))
                stdout.write("(image attached to your next message)\n")
            except LlavatuneError as err:
                stdout.write(f"({err} Nothing attached.)\n")
            continue
        if re.fullmatch(r"/\w+", line.split(" ")[0]):  # /help, /img, /image without a path: not for the model
            stdout.write(f"(commands: {COMMANDS})\n")
            continue
        if not line:
            continue
        text = "<image>\n" * len(pending) + line
        images += pending
        pending = []
        history.append({"role": "user", "content": text})
        stream = model.stream(history, images=images, **generation)
        for piece in stream:
            stdout.write(piece)
            stdout.flush()
        if stream.answer.finish_reason == "length":
            stdout.write(f" [cut at max_new_tokens={cfg.max_new_tokens}: --max-new-tokens N for longer answers]")
        stdout.write("\n")
        history.append({"role": "assistant", "content": stream.answer.text.strip()})
