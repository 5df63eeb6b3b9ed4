"""`data validate` finds every kind of bad row, with its row number, and exits non-zero; it streams 665K rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from llavatune.cli import run
from llavatune.data.checks import ValidateConfig, main
from llavatune.errors import LlavatuneError


def good(i, image="ok.png", answer="red"):
    return {"id": str(i), "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                            {"from": "gpt", "value": answer}]}


def test_every_problem_is_reported_with_its_row(tmp_path, tiny_model_dir):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "ok.png")
    (images / "corrupt.png").write_bytes(b"not a png")
    long_answer = " ".join(["red"] * 3000)
    rows = [
        good(1),                                                         # 1 fine
        good(2, image="missing.png"),                                    # 2 missing image
        good(3, image="../outside.png"),                                 # 3 escapes the folder
        {"id": "4", "image": "ok.png", "conversations": [{"from": "human", "value": "no tag"},
                                                          {"from": "gpt", "value": "x"}]},  # 4 tag mismatch
        good(5, answer=""),                                              # 5 empty reply
        {"id": "6", "conversations": [{"from": "alien", "value": "hi"}]},  # 6 unknown role
        good(7, answer=long_answer),                                     # 7 longer than max_length
        good(8, image="corrupt.png"),                                    # 8 undecodable
        {"id": "9", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},  # 9 order
        good(1),                                                         # 10 duplicate of row 1
        good(11, answer="红色"),                                          # 11 the tiny Llama vocabulary has no Chinese
        {"id": "12", "image": "ok.png", "conversations": [{"from": "human", "value": "<Image>\nWhat colour?"},
                                                           {"from": "gpt", "value": "red"}]},  # 12 a near-miss tag
        {"id": "13", "conversations": [{"from": "human", "value": "What colour?"}]},  # 13 a question, no answer
    ]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    cfg = ValidateConfig(data=data, images=images, model=tiny_model_dir, max_length=512)
    with pytest.raises(LlavatuneError, match="12 of 13 rows have problems"):
        main(cfg)
    lines = (tmp_path / "d.json.errors.txt").read_text().splitlines()
    found = {(int(line.split(":")[1]), line.split(": ")[1]) for line in lines}
    assert found == {(2, "image missing"), (3, "image path escapes the folder"), (4, "<image> count mismatch"),
                     (5, "empty assistant turn"), (6, "unknown role"), (7, "longer than max_length"),
                     (8, "image cannot be decoded"), (9, "roles do not alternate"), (10, "duplicate"),
                     (11, "answer has unknown tokens"), (12, "<image> count mismatch"), (13, "no answer")}
    assert lines[-2].endswith("0 <image> tag(s) but 1 image(s); write <image> for '<Image>' (lower case, no spaces)")
    assert lines[2].endswith("list one image per tag, or remove the extra tag")


def test_clean_file_passes_and_cli_exit_codes(tmp_path, capsys, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "ok.png")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([good(1), good(2, answer="blue")]))
    report = main(ValidateConfig(data=data, images=images))
    assert report.rows == 2 and report.bad_rows == 0
    monkeypatch.chdir(tmp_path)  # the summary is one line: as the two-column table's title it wrapped
    main(ValidateConfig(data=Path("d.json"), images=Path("images")))
    assert "d.json: 2 rows, 0 with problems" in capsys.readouterr().err.splitlines()
    data.write_text(json.dumps([good(1), good(2, image="nope.png")]))
    with pytest.raises(SystemExit) as exit_info:
        run(["data", "validate", str(data), "--images", str(images)])
    assert exit_info.value.code == 2


def test_every_broken_json_line_is_listed(tmp_path):
    """A JSON-lines file with two cut lines: both are named in one run, and the rows after them are checked."""
    def text(i, answer="red"):
        return json.dumps({"id": str(i), "conversations": [{"from": "human", "value": "What colour?"},
                                                           {"from": "gpt", "value": answer}]})

    data = tmp_path / "d.jsonl"
    broken = ['{"id": "2", "conversations": [', "{oops"]
    data.write_text("\n".join([text(1), broken[0], text(3, answer=""), broken[1], text(5, "blue")]))
    with pytest.raises(LlavatuneError, match="3 of 5 rows have problems"):
        main(ValidateConfig(data=data))
    found = [line.split(": ")[:2] for line in (tmp_path / "d.jsonl.errors.txt").read_text().splitlines()]
    assert found == [[f"{data}:2", "not valid JSON"], [f"{data}:3", "empty assistant turn"],
                     [f"{data}:4", "not valid JSON"]]


@pytest.mark.slow
def test_validate_665k_rows_under_two_minutes(tmp_path):
    """The size of llava_v1_5_mix665k.json, text plus image references whose files are absent."""
    data = tmp_path / "mix.json"
    with data.open("w") as f:
        f.write("[")
        for i in range(665_298):
            image = "" if i % 16 == 0 else f'"image": "coco/train2017/{i:012d}.jpg", '
            tag = "" if i % 16 == 0 else "<image>\\n"
            f.write(("," if i else "") + f'{{"id": "{i}", {image}"conversations": [{{"from": "human", "value": '
                    f'"{tag}What is in the image?"}}, {{"from": "gpt", "value": "Answer {i}."}}]}}')
        f.write("]")
    (tmp_path / "images").mkdir()
    start = time.perf_counter()
    with pytest.raises(LlavatuneError):
        main(ValidateConfig(data=data, images=tmp_path / "images"))
    elapsed = time.perf_counter() - start
    lines = (tmp_path / "mix.json.errors.txt").read_text().count("image missing")
    assert lines == 665_298 - len(range(0, 665_298, 16))
    assert elapsed < 120, f"validate took {elapsed:.0f} s"
