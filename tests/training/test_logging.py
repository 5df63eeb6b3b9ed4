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


def test_smoothing_follows_a_falling_loss_without_lag():
    """An exponential moving average runs above a falling loss (at weight 0.9 about ten steps behind); the
    centred average in log space lies on an exponential decay, and still flattens step-to-step noise."""
    decay = [8.0 * 0.96**s for s in range(150)]
    assert smooth(decay) == pytest.approx(decay, rel=1e-9)
    assert smooth([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])
    noisy = [1.0 + (0.5 if s % 2 else -0.5) for s in range(100)]
    assert max(smooth(noisy)[5:-5]) - min(smooth(noisy)[5:-5]) < 0.2  # vs 1.0 raw
    assert smooth(noisy)[0] == pytest.approx(noisy[0]) and smooth(noisy)[-1] == pytest.approx(noisy[-1])  # the ends are their own points
    signed = smooth([0.5, -0.5] * 50)  # not all positive (a reward, a margin): a plain average
    assert max(signed[5:-5]) - min(signed[5:-5]) < 0.3


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
