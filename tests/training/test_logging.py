"""The loss-curve plot: a PNG of the logged rows, made without touching the caller's matplotlib state."""

from __future__ import annotations

import matplotlib
from PIL import Image

import pytest

from llavatune.training.logging import plot_curves, smooth


def test_loss_curve_leaves_the_callers_backend_alone(tmp_path):
    """From a notebook, training must not switch the user's plotting backend (it did: matplotlib.use('Agg'))."""
    rows = [{"step": s, "loss": 7.0 / s, "lr": 1e-3} for s in range(1, 21)] + [{"step": 20, "eval_loss": 0.5}]
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_curves(rows, tmp_path / "loss.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    with Image.open(tmp_path / "loss.png") as img:
        assert img.size == (1000, 350)  # 10 x 3.5 inches at 100 dpi


def test_smoothing_follows_the_trend_from_the_first_step():
    assert smooth([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])  # no pull towards 0 at the start
    noisy = [1.0 + (0.5 if s % 2 else -0.5) for s in range(100)]
    assert max(smooth(noisy)[20:]) - min(smooth(noisy)[20:]) < 0.2  # vs 1.0 raw
    stepped = smooth([2.0] * 50 + [1.0] * 50)
    assert stepped[49] == pytest.approx(2.0) and stepped[-1] == pytest.approx(1.0, abs=0.01)
