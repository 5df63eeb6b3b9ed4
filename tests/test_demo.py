"""The README's main command in full mode: offline, under 5 minutes, before <= 0.3 and after >= 0.9."""

from __future__ import annotations

import json
import time

import pytest

from llavatune.demo import DemoConfig, main


@pytest.mark.slow
def test_demo_numbers(tmp_path):
    started = time.perf_counter()
    result = main(DemoConfig(out=tmp_path / "demo"))
    seconds = time.perf_counter() - started
    assert seconds < 300
    saved = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    assert saved == result and set(saved) == {"n", "models"} and set(saved["models"]) == {"base", "finetuned"}
    assert saved["models"]["base"]["exact_match"] <= 0.3
    assert saved["models"]["finetuned"]["exact_match"] >= 0.9
    for name in ("report.md", "report.html", "metrics.png", "predictions.jsonl", "answers-finetuned.jsonl"):
        assert (tmp_path / "demo" / "eval" / name).is_file()
    assert (tmp_path / "demo" / "runs" / "lora" / "loss.png").is_file()
