"""What data tools need from a model folder, without loading weights: tokenizer, template, image tokens."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llavatune.config import read_run_config
from llavatune.data.templates import Template, get_template
from llavatune.errors import LlavatuneError
from llavatune.model.tokens import IMAGE_TOKEN


@dataclasses.dataclass
class TextSide:
    tokenizer: object
    template: Template
    image_token_id: int
    image_seq_length: int


def template_name(folder: Path) -> str:
    """The template a checkpoint was built or trained with (run_config.yaml), else its tokenizer's own."""
    run = read_run_config(folder) or {}
    return (run.get("model") or {}).get("template") or "hf"


def load_text_side(folder: Path | str, template: str | None = None) -> TextSide:
    """A checkpoint's tokenizer, template and image tokens. A run stands for its final (or newest) checkpoint; an
    adapter checkpoint has its own tokenizer and template, and its base's config.json."""
    from transformers import AutoTokenizer

    from llavatune.model import load as loadlib

    folder = loadlib.resolve(folder)
    config_path = (loadlib.base_of(folder) if loadlib.is_adapter(folder) else folder) / "config.json"
    if not config_path.is_file():
        raise LlavatuneError(f"{folder}: no config.json; give a llava-hf checkpoint folder (see `llavatune build`), "
                             "an adapter checkpoint or a run.")
    config = json.loads(config_path.read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_id = config.get("image_token_index", config.get("image_token_id"))
    if image_id is None or tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != image_id:
        raise LlavatuneError(f"{folder}: the tokenizer's {IMAGE_TOKEN} id does not match config.json "
                             f"image_token_index={image_id}.")
    return TextSide(tokenizer, get_template(template or template_name(folder)), image_id,
                    int(config.get("image_seq_length", 576)))
