"""llavatune: build, convert, fine-tune, evaluate and serve LLaVA-style vision-language models."""

__version__ = "0.1.0"


def load(path, adapter=None, load_4bit: bool = False, **kwargs):
    """Load a model, run or checkpoint for chat and batched generation (see llavatune.inference.api)."""
    from llavatune.inference.api import load as _load

    return _load(path, adapter=adapter, load_4bit=load_4bit, **kwargs)
