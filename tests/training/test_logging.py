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


def test_progress_in_a_log_file_is_lines_not_a_bar(capsys):
    """Under nohup or a scheduler (stderr not a terminal) the bar's carriage returns would make one huge line."""
    from llavatune.training.logging import Progress

    progress = Progress(total=5, initial=2, main=True, every_s=3600)  # a resumed run: steps 3..5 left
    for step in (3, 4, 5):
        row = {"step": step, "lr": 1e-3, "samples_per_s": 10.0, "tokens_per_s": 1234.0, "mem_gib": 0.5}
        progress.update({**row, "loss": 1.5} if step != 4 else row)
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()  # the first step of this run and the last; step 4 fell within every_s
    assert len(lines) == 2 and lines[0].startswith("train step 3/5: loss 1.5000, lr 0.001, 10.0 samples/s, 1,234 ")
    assert lines[1].startswith("train step 5/5: loss 1.5000") and lines[1].endswith("0:00:00 left")
    quiet = Progress(total=2, initial=0, main=False, every_s=0)  # other ranks print nothing
    quiet.update({"step": 1, "lr": 1e-3, "samples_per_s": 1.0, "tokens_per_s": 1.0, "mem_gib": 0.1})
    assert capsys.readouterr().err == ""
