"""The README's main command (`make demo`, run once by the demo_run fixture) in full mode: offline, under 5
minutes, before <= 0.3 and after >= 0.9; the line it prints last is what it saved."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_numbers(demo_run):
    out, seconds, printed = demo_run
    assert seconds < 300
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(saved) == {"n", "models"} and set(saved["models"]) == {"base", "finetuned"}
    before, after = saved["models"]["base"]["exact_match"], saved["models"]["finetuned"]["exact_match"]
    assert printed == {"before": before, "after": after}
    assert before <= 0.3 and after >= 0.9
    for name in ("report.md", "report.html", "metrics.png", "predictions.jsonl", "answers-finetuned.jsonl"):
        assert (out / "eval" / name).is_file()
    assert (out / "runs" / "lora" / "loss.png").is_file()
