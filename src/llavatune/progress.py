"""Progress bars that suit where the output goes. On a terminal or in a notebook a bar redraws itself many times
a second; written to a file (nohup, a cluster scheduler, CI) each redraw is appended to one ever longer line, so
there a bar redraws every 30 seconds."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def live() -> bool:
    """stderr is a terminal, or this is a notebook (where tqdm.auto draws a widget)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def bar(total: int, desc: str, **kwargs) -> tqdm:
    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=0.1 if live() else 30.0, **kwargs)
