"""`data stats`: row counts, lengths, and image sizes read from the files' headers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llavatune.data.stats import StatsConfig, _number, stats


def test_counts_lengths_and_image_sizes(tmp_path):
    sizes = {"a.png": (100, 100), "b.jpg": (2000, 2500), "c.png": (640, 480)}
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / name)
    rows = [{"id": str(i), "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]}
        for i, name in enumerate(sizes)]
    rows.append({"id": "t", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]})
    (tmp_path / "data.json").write_text(json.dumps(rows))
    result = stats(StatsConfig(data=tmp_path / "data.json", images=tmp_path, plot=tmp_path / "lengths.png"))
    assert (result["rows"], result["one_image"], result["text_only"]) == (4, 3, 1)
    assert result["length_max"] == 6 and (tmp_path / "lengths.png").stat().st_size > 0  # 5 words asked, 1 answered
    assert result["images_measured"] == 3 and result["images_over_4mp"] == 1
    assert result["megapixels_max"] == 5.0 and result["megapixels_p50"] == 640 * 480 / 1e6
    assert [_number(v) for v in (100 * 100 / 1e6, 0.31, 0.0, 1234.5, 12345)] == ["0.01", "0.3", "0.0", "1,234.5",
                                                                               "12,345"]  # 0.01 MP, not 0.0
    assert "images_measured" not in stats(StatsConfig(data=tmp_path / "data.json", plot=tmp_path / "p.png"))
    Image.new("1", (15000, 15000)).save(tmp_path / "c.png")  # past PIL's pixel limit: passed over, not a crash
    result = stats(StatsConfig(data=tmp_path / "data.json", images=tmp_path, plot=tmp_path / "lengths.png"))
    assert result["images_measured"] == 2


def test_preview_validate_and_stats_ask_with_the_runs_prompt_suffix(tiny_model_dir, tmp_path, capsys):
    """`data preview --prompt-suffix short` shows the question as a run with prompt_suffix=short trains on it,
    `data validate --prompt-suffix` counts those tokens against max_length, and `data stats` those lengths."""
    from llavatune.data.checks import ValidateConfig
    from llavatune.data.checks import main as validate
    from llavatune.data.stats import PreviewConfig, preview
    from llavatune.errors import LlavatuneError

    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "What colour?", "answer": "red"}) + "\n")
    bare = preview(PreviewConfig(data=tmp_path / "qa.jsonl", model=tiny_model_dir))
    assert "single word" not in capsys.readouterr().out
    asked = preview(PreviewConfig(data=tmp_path / "qa.jsonl", model=tiny_model_dir, prompt_suffix="short"))
    assert "What colour?\nAnswer the question using a single word or phrase." in capsys.readouterr().out
    assert asked["tokens"] > bare["tokens"]
    common = dict(data=tmp_path / "qa.jsonl", model=tiny_model_dir, max_length=bare["tokens"])
    assert validate(ValidateConfig(**common)).bad_rows == 0
    with pytest.raises(LlavatuneError, match="1 of 1 rows have problems"):
        validate(ValidateConfig(**common, prompt_suffix="short"))
    assert (tmp_path / "qa.jsonl.errors.txt").read_text().startswith(f"{tmp_path / 'qa.jsonl'}:1: longer than max_length")
    lengths = [stats(StatsConfig(data=tmp_path / "qa.jsonl", plot=tmp_path / "p.png", prompt_suffix=suffix))["length_max"]
               for suffix in ("", "short")]
    assert lengths == [3, 3 + len("Answer the question using a single word or phrase.".split())]  # words, no model
