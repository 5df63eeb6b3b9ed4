"""`data stats`: row counts, lengths, and image sizes read from the files' headers."""

from __future__ import annotations

import json

from PIL import Image

from llavatune.data.stats import StatsConfig, stats


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
    assert "images_measured" not in stats(StatsConfig(data=tmp_path / "data.json", plot=tmp_path / "p.png"))
    Image.new("1", (15000, 15000)).save(tmp_path / "c.png")  # past PIL's pixel limit: passed over, not a crash
    result = stats(StatsConfig(data=tmp_path / "data.json", images=tmp_path, plot=tmp_path / "lengths.png"))
    assert result["images_measured"] == 2
