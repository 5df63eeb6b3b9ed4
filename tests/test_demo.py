"""The README's main command (`make demo`, run once by the demo_run fixture) in full mode: offline, under 5
minutes, before <= 0.3 and after >= 0.9; the line it prints last is what it saved. It is also the suite's test
of the two-stage recipe learning a task (tests/training/test_learning.py has the real-image one)."""

from __future__ import annotations

import json

import pytest

from llavatune.demo import DemoConfig
from llavatune.metrics import exact_match


@pytest.mark.slow
def test_demo_numbers(demo_run):
    out, seconds, printed, shown = demo_run
    assert seconds < 300
    assert "Loading weights" not in shown and "6/6 evaluate base vs fine-tuned" in shown  # its own output only
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(saved) == {"n", "models", "cut_at_max_new_tokens"} and set(saved["models"]) == {"base", "finetuned"}
    # no "shown_in_training" above: held out from both stages, which eval finds from the merged model's records
    from llavatune.evaluate import trained_on
    assert [path.name for path, _ in trained_on(out / "models" / "tiny-tuned")] == ["train.json", "captions-train.json"]
    # the tuned model ends its answers itself; the random base runs most of them into the limit
    assert saved["cut_at_max_new_tokens"]["finetuned"] == 0 and saved["cut_at_max_new_tokens"]["base"] > 30
    before, after = saved["models"]["base"]["exact_match"], saved["models"]["finetuned"]["exact_match"]
    assert printed == {"before": before, "after": after}
    assert before <= 0.3 and after >= 0.9
    for name in ("report.md", "report.html", "metrics.png", "predictions.jsonl", "answers-finetuned.jsonl"):
        assert (out / "eval" / name).is_file()
    assert (out / "runs" / "lora" / "loss.png").is_file()


@pytest.mark.slow
def test_the_evaluation_during_training_saw_what_eval_sees(demo_run):
    """Stage 2 scored the held-out split as it trained: its loss fell, and on the first questions it answered,
    the tuned model scores as `eval` scores the merged model."""
    out = demo_run[0]
    rows = [json.loads(line) for line in (out / "runs" / "lora" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == DemoConfig().finetune_steps and len(evals) > 2
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] / 2 and evals[0]["eval_exact_match"] <= 0.3
    predictions = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    answered = len((out / "runs" / "lora" / "eval_answers.jsonl").read_text().splitlines()) // len(evals)
    assert answered == 8
    in_eval = sum(exact_match(p["finetuned"], p["reference"]) for p in predictions[:answered]) / answered
    assert evals[-1]["eval_exact_match"] == pytest.approx(in_eval)
