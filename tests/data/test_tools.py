"""sample / filter / repeat / split / mix / convert / from-folders, and the render contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llavatune.data import tools
from llavatune.data.formats import read_records
from llavatune.data.synth import SynthConfig
from llavatune.data.synth import main as synth
from llavatune.errors import LlavatuneError

from test_pack import image_bytes, packed

SOURCES = ["coco/1.jpg", "textvqa/train_images/2.jpg", None, "textvqa/train_images/3.jpg", "gqa/4.jpg"]


def mix_file(tmp_path, n=200) -> Path:
    rows = []
    for i in range(n):
        src = SOURCES[i % len(SOURCES)]
        row = {"id": str(i), "conversations": [{"from": "human", "value": ("<image>\n" if src else "") + f"Q{i}"},
                                               {"from": "gpt", "value": f"A{i}"}]}
        if src:
            row["image"] = src
        rows.append(row)
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(rows))
    return path


def llavatune(*args, stdin=None):
    exe = str(Path(sys.executable).parent / "llavatune")
    result = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_scenario1_subset_pipeline_is_deterministic(tmp_path):
    data = mix_file(tmp_path)
    piped = llavatune("data", "filter", str(data), "--image-prefix", "textvqa/", "--out", "-")
    for attempt in range(2):
        out = tmp_path / f"subset{attempt}.json"
        llavatune("data", "sample", "-", "--n", "10", "--seed", "0", "--out", str(out), stdin=piped)
    first, second = (json.loads((tmp_path / f"subset{k}.json").read_text()) for k in range(2))
    assert first == second and len(first) == 10
    assert all(row["image"].startswith("textvqa/") for row in first)
    other_seed = tools.sample(tools.filter_rows(tools.rows_of(data), image_prefix="textvqa/"), 10, seed=1)
    assert other_seed != first


def test_filter_text_only_and_repeat_and_split(tmp_path):
    data = mix_file(tmp_path)
    text_only = list(tools.filter_rows(tools.rows_of(data), text_only=True))
    assert len(text_only) == 40 and all("image" not in r for r in text_only)
    assert sum(1 for _ in tools.repeat(data, 3)) == 600
    train, val = map(list, tools.split(data, 0.1, seed=0))
    assert len(val) == 20 and len(train) == 180
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in val})
    assert tuple(map(list, tools.split(data, 0.1, seed=0))) == (train, val)
    assert [len(list(part)) for part in tools.split(data, 37, seed=0)] == [163, 37]  # a number of rows
    for bad in (1.5, 200, 0):
        with pytest.raises(LlavatuneError, match="--val"):
            tools.split(data, bad, seed=0)


def test_split_keeps_the_rows_of_an_image_on_one_side(tmp_path, capsys):
    """Three questions on each of 30 photos, and rows with two photos that tie two groups into one: no photo is on
    both sides by image; drawing rows leaks most of the validation photos into training."""
    def row(i, *images):
        return {"id": str(i), "images": list(images), "conversations": [
            {"from": "human", "value": "<image>\n" * len(images) + f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]}
    rows = [row(3 * p + k, f"p{p}.jpg") for p in range(30) for k in range(3)]
    rows += [row(90 + p, f"p{p}.jpg", f"./p{p + 1}.jpg") for p in range(0, 10, 2)]  # p0+p1, p2+p3, ...
    data = tmp_path / "photos.json"
    data.write_text(json.dumps(rows))
    groups = tools.image_groups(tools.rows_of(data))
    assert sorted(map(len, groups)) == [3] * 20 + [7] * 5  # ./p1.jpg is p1.jpg
    photos = lambda part: {os.path.normpath(image) for r in part for image in r["images"]}  # noqa: E731
    for seed in range(4):  # groups of 3 and 7 cannot always make 20 exactly: a little short then, and said
        train, val = map(list, tools.split(data, 20, seed=seed))
        assert photos(train).isdisjoint(photos(val)) and len(train) + len(val) == 95 and 17 <= len(val) <= 20
        note = f"validation has {len(val)} rows, not 20: rows that share an image stay on one side"
        assert (note in capsys.readouterr().err) == (len(val) < 20)
    train, val = map(list, tools.split(data, 20, seed=0, by="row"))
    assert len(val) == 20 and len(photos(train) & photos(val)) > 10
    with pytest.raises(LlavatuneError, match="every image of .* is in more than 2 rows"):
        tools.split(data, 2, seed=0)
    with pytest.raises(LlavatuneError, match="--by is image or row"):
        tools.split(data, 2, seed=0, by="photo")


def test_a_filter_that_keeps_nothing_or_a_sample_larger_than_the_data_is_said(tmp_path, capsys):
    data = mix_file(tmp_path, n=10)
    assert list(tools.filter_rows(tools.rows_of(data), image_prefix="textvqa/test_images/")) == []
    err = capsys.readouterr().err
    assert err.startswith("warning: no row matched; the images' first folders: ") and "textvqa/ (" in err
    assert len(tools.sample(tools.rows_of(data), 50, seed=0)) == 10
    assert "--n 50 asked for, the data has 10 rows: all of them kept" in capsys.readouterr().err
    with pytest.raises(LlavatuneError, match="--n must be at least 1, got 0"):  # wrote an empty file before
        tools.sample(tools.rows_of(data), 0, seed=0)
    with pytest.raises(ValueError, match="n must be above 0, got 0"):
        SynthConfig(out=tmp_path / "none", n=0)


def test_mix_weights(tmp_path):
    data = mix_file(tmp_path, n=10)
    mixed = tools.mix([f"{data}:2", f"{data}:0.5"], seed=0)
    assert len(mixed) == 25
    assert len(tools.mix([str(data)], seed=0)) == 10
    with pytest.raises(LlavatuneError, match=r"mix.json:x: file not found"):  # a weight that is not a number
        tools.mix([f"{data}:x"], seed=0)


def test_the_row_tools_keep_the_images_of_parquet_data(shapes_data, tmp_path):
    """sample / filter / repeat / split / mix on a parquet dataset write parquet with the images still inside;
    JSON, which cannot hold them, is refused with the way out."""
    data = packed(shapes_data, tmp_path)
    originals = image_bytes(data)
    tools.write_rows(tmp_path / "s.parquet", tools.sample(tools.rows_of(data), 4, seed=0))
    tools.write_rows(tmp_path / "f.parquet", tools.filter_rows(tools.rows_of(data), image_prefix="images/shape_0000"))
    tools.write_rows(tmp_path / "r.parquet", tools.repeat(data, 2))
    mixed = tools.mix([f"{data}:0.5"], seed=0)  # read in file order: shuffled, each image would read its row group
    assert all(isinstance(image["bytes"], bytes) for row in mixed for image in row["images"])
    tools.write_rows(tmp_path / "m.parquet", mixed)
    written = tools.write_split(data, 0.2, 0, tmp_path / "split")
    assert [(file.name, n) for file, n in written] == [("train.parquet", 8), ("val.parquet", 2)]
    for name, n in [("s", 4), ("f", 10), ("r", 20), ("m", 5), ("split/train", 8), ("split/val", 2)]:
        out = tmp_path / f"{name}.parquet"
        assert len(list(read_records(out))) == n
        assert all(originals[i] == images for i, images in image_bytes(out).items())
        assert {r.raw["category"] for r in read_records(out)} == {"shapes"}
    assert set(image_bytes(tmp_path / "split/train.parquet")).isdisjoint(image_bytes(tmp_path / "split/val.parquet"))
    rows = list(tools.rows_of(data))
    mixed = [*rows[:9] * 30, {**rows[9], "source": "other"}]  # a field that only the 271st row has
    assert tools.write_rows(tmp_path / "mixed.parquet", mixed) == 271
    assert [r.raw["source"] for r in read_records(tmp_path / "mixed.parquet")][-2:] == [None, "other"]
    with pytest.raises(LlavatuneError, match=r"s.json: row 1 holds image bytes .* write a \.parquet file"):
        tools.write_rows(tmp_path / "s.json", tools.rows_of(data))
    assert not list(tmp_path.glob("*.s.json*")) and not (tmp_path / "s.json").exists()
    with pytest.raises(LlavatuneError, match=r"image 'images/shape_00000.png' is a file; packing .* --images DIR"):
        tools.write_rows(tmp_path / "x.parquet", tools.rows_of(shapes_data / "qa.json"))


def test_convert_round_trip(tmp_path):
    data = mix_file(tmp_path, n=10)
    messages = tmp_path / "m.jsonl"
    tools.write_rows(messages, tools.convert(tools.rows_of(data), "messages"))
    back = tmp_path / "back.json"
    tools.write_rows(back, tools.convert(tools.rows_of(messages), "llava"))
    assert [(r.turns, r.images) for r in read_records(back)] == [(r.turns, r.images) for r in read_records(data)]
    sharegpt = list(tools.convert(tools.rows_of(data), "sharegpt"))
    assert sharegpt[0]["images"] == ["coco/1.jpg"]


def test_from_folders(tmp_path):
    root = synth(SynthConfig(out=tmp_path / "parts", kind="defects", n=3))
    rows = tools.from_folders(root, "Is this part OK or NG?", {"NG": "NG: scratch"})
    assert len(rows) == 6
    assert {r["conversations"][1]["value"] for r in rows} == {"OK", "NG: scratch"}
    assert all((root / r["image"]).is_file() for r in rows)
    with pytest.raises(Exception, match="no folder"):
        tools.from_folders(root, "q", {"BAD": "x"})


def test_from_folders_passes_over_what_is_not_a_photo(tmp_path, capsys):
    """Folders copied from a Mac or a camera card: hidden folders and AppleDouble files are not classes or photos;
    an empty class is an error."""
    root = synth(SynthConfig(out=tmp_path / "parts", kind="defects", n=2))
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "a.png").write_bytes((root / "OK" / sorted(os.listdir(root / "OK"))[0]).read_bytes())
    (root / "OK" / "._copy.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork, not a PNG
    (root / "NG" / "notes.txt").write_text("batch 7")
    rows = tools.from_folders(root, "q", {})
    assert sorted({r["image"].split("/")[0] for r in rows}) == ["NG", "OK"] and len(rows) == 4
    err = capsys.readouterr().err
    assert "photos per class: NG 2, OK 2; 1 other file(s) passed over" in err
    assert f"image paths are relative to {root}: pass --images {root}" in err  # the rows name no folder of their own
    (root / "SCRATCH").mkdir()
    with pytest.raises(LlavatuneError, match=r"SCRATCH: no photos \(.png .jpg"):
        tools.from_folders(root, "q", {})


def test_render_contract_prints_only_the_text():
    conversation = json.dumps([{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}])
    out = llavatune("data", "render", "--template", "vicuna_v1", stdin=conversation)
    assert out.endswith("USER: <image>\nHi ASSISTANT: Hello</s>")
    prompt = llavatune("data", "render", "--template", "vicuna_v1", "--generation-prompt", stdin=conversation)
    assert prompt.endswith("USER: <image>\nHi ASSISTANT:")
    with pytest.raises(LlavatuneError, match="--template hf renders with a model's own chat template: add --model"):
        tools.render_conversation(conversation, "hf", False)  # said "this tokenizer has none" of no tokenizer


def test_synth_is_deterministic_and_answers_match_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    from llavatune.data.synth import COLOURS

    a = synth(SynthConfig(out=tmp_path / "a", n=12, tasks=["colour"]))
    b = synth(SynthConfig(out=tmp_path / "b", n=12, tasks=["colour"]))
    assert (a / "qa.json").read_bytes() == (b / "qa.json").read_bytes()
    assert (a / "images/shape_00007.png").read_bytes() == (b / "images/shape_00007.png").read_bytes()
    for row in json.loads((a / "qa.json").read_text()):
        pixels = np.asarray(Image.open(a / row["image"])).reshape(-1, 3).astype(int)
        answer = row["conversations"][1]["value"]
        # the answer's colour is drawn; no other palette colour is
        hits = {name: int((np.abs(pixels - rgb).sum(1) < 30).sum()) for name, rgb in COLOURS.items()}
        assert hits[answer] > 20 and all(v == 0 for k, v in hits.items() if k != answer)
