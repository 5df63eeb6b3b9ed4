"""Progress bars that suit where the output goes. On a terminal or in a notebook a bar redraws itself many times
a second; written to a file (nohup, a cluster scheduler, CI) each redraw is appended to one ever longer line, so
there a bar redraws every 30 seconds."""

from __future__ import annotations

import contextlib
import sys

from tqdm.auto import tqdm


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
