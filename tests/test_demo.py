"""The README's main command in full mode: offline, under 5 minutes, before <= 0.3 and after >= 0.9."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_numbers(demo_run):
    out, seconds, result = demo_run
    assert seconds < 300
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert saved == result and set(saved) == {"n", "models"} and set(saved["models"]) == {"base", "finetuned"}
    assert saved["models"]["base"]["exact_match"] <= 0.3
    assert saved["models"]["finetuned"]["exact_match"] >= 0.9
    for name in ("report.md", "report.html", "metrics.png", "predictions.jsonl", "answers-finetuned.jsonl"):
        assert (out / "eval" / name).is_file()
    assert (out / "runs" / "lora" / "loss.png").is_file()
