"""What the terminal shows: messages, tables and progress bars, each suited to where the output goes.

Messages are soft-wrapped: a terminal wraps them, a log file keeps each one whole on its line (a path in it stays
one piece to copy). On a terminal or in a notebook a bar redraws itself many times a second; written to a file
(nohup, a cluster scheduler, CI) each redraw is appended to one ever longer line, so there a bar redraws every
30 seconds."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from tqdm.auto import tqdm

messages = Console(stderr=True, soft_wrap=True)  # notes, warnings, what was written where
results = Console(soft_wrap=True)  # a verb's answer (tables, numbers): stdout, to pipe or redirect


def live() -> bool:
    """stderr is a terminal, or this is a notebook (where tqdm.auto draws a widget)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def bar(total: int | None, desc: str, **kwargs) -> tqdm:
    """A bar to `total` (None: a count and a rate, for a stream of unknown length)."""
    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=0.1 if live() else 30.0, **kwargs)


@contextlib.contextmanager
def without_transformers_bars():
    """transformers' own bars ("Loading weights", "Writing model shards") off within the block, then as before."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
