"""Packing rows and their image files into parquet, and unpacking a dataset's images into a folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from llavatune.data import tools
from llavatune.data.formats import read_records
from llavatune.data.pack import write_parquet
from llavatune.errors import LlavatuneError


def packed(shapes_data, tmp_path, n=10) -> Path:
    """The first n shape rows, with a category column, packed with their images into one parquet file."""
    rows = json.loads((shapes_data / "qa.json").read_text())[:n]
    for row in rows:
        row["category"] = "shapes"
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    out = tmp_path / "packed.parquet"
    write_parquet(out, read_records(tmp_path / "rows.json"), shapes_data)
    return out


def image_bytes(path) -> dict[str, list[bytes]]:
    return {r.id: [im.read() if hasattr(im, "read") else im for im in r.images] for r in read_records(path)}


def test_parquet_packs_the_image_files_with_the_rows(shapes_data, tmp_path):
    """`data convert --out X.parquet --images DIR`: the same rows, each with its image file's bytes inside (as HF
    datasets keeps images), in row groups; a missing image names its row."""
    import pyarrow.parquet as pq

    out = tmp_path / "qa.parquet"
    assert write_parquet(out, read_records(shapes_data / "qa.json"), shapes_data, chunk=16) == 40
    packed, plain = list(read_records(out)), list(read_records(shapes_data / "qa.json"))
    assert [(r.id, r.turns) for r in packed] == [(r.id, r.turns) for r in plain]
    assert [[im.read() for im in r.images] for r in packed] == \
        [[(shapes_data / ref).read_bytes() for ref in r.images] for r in plain]
    assert pq.ParquetFile(out).num_row_groups == 3
    features = json.loads(pq.read_schema(out).metadata[b"huggingface"])["info"]["features"]
    assert features["images"] == [{"_type": "Image"}]
    assert tools.convert_file(str(out), "llava", str(tmp_path / "again.parquet")) == 40  # bytes stay bytes
    assert [[im.read() for im in r.images] for r in read_records(tmp_path / "again.parquet")] == \
        [[im.read() for im in r.images] for r in packed]

    rows = json.loads((shapes_data / "qa.json").read_text())[:3]
    rows[2]["image"] = "images/gone.png"
    (tmp_path / "gone.json").write_text(json.dumps(rows))
    with pytest.raises(LlavatuneError, match=r"gone.json:3: image 'images/gone.png' not found"):
        tools.convert_file(str(tmp_path / "gone.json"), "llava", str(tmp_path / "gone.parquet"), shapes_data)
    assert not list(tmp_path.glob("*gone.parquet*"))  # nothing half-written left behind
    rows = [{**row, "id": str(i)} for i, row in enumerate(json.loads((shapes_data / "qa.json").read_text()) * 8)][:300]
    rows[1]["answers"], rows[299]["category"] = ["red", "red"], "colour"  # fields that only some rows have
    (tmp_path / "late.json").write_text(json.dumps(rows))
    tools.convert_file(str(tmp_path / "late.json"), "llava", str(tmp_path / "late.parquet"), shapes_data)
    late = list(read_records(tmp_path / "late.parquet"))
    assert [(r.raw["answers"], r.raw["category"]) for r in late[:2]] == [(None, None), (["red", "red"], None)]
    assert late[299].raw["category"] == "colour"
    with pytest.raises(LlavatuneError, match=r"late.json:3: field\(s\) category not in the first 2 rows"):
        rows[2]["category"] = "colour"  # streamed rows (from stdin): the first chunk of rows sets the columns
        (tmp_path / "late.json").write_text(json.dumps(rows[:3]))
        write_parquet(tmp_path / "late.parquet", read_records(tmp_path / "late.json"), shapes_data, chunk=2)
    rows[1]["answers"], rows[2]["answers"] = "red", ["red"]
    (tmp_path / "mixed.json").write_text(json.dumps(rows[:3]))
    with pytest.raises(LlavatuneError, match=r"field 'answers' holds values of different types"):
        tools.convert_file(str(tmp_path / "mixed.json"), "llava", str(tmp_path / "mixed.parquet"), shapes_data)
    with pytest.raises(LlavatuneError, match="a parquet file holds LLaVA rows, not messages ones: leave out --to"):
        tools.convert_file(str(shapes_data / "qa.json"), "messages", str(tmp_path / "m.parquet"), shapes_data)


def test_row_groups_close_at_group_bytes_of_images_and_a_rewritten_file_is_read_anew(shapes_data, tmp_path,
                                                                                     monkeypatch):
    """A sample reads its image's whole row group, so a group holds about GROUP_BYTES of images (and at most
    `chunk` rows); rows without images add no bytes. A file written again under its name is read again."""
    import pyarrow.parquet as pq

    from llavatune.data import pack

    plain = list(read_records(shapes_data / "qa.json"))[:12]
    sizes = [(shapes_data / r.images[0]).stat().st_size for r in plain]
    monkeypatch.setattr(pack, "GROUP_BYTES", sum(sizes[:3]))  # three images close a group
    out = tmp_path / "qa.parquet"
    write_parquet(out, iter(plain), shapes_data, chunk=256)
    assert [pq.ParquetFile(out).metadata.row_group(g).num_rows for g in range(4)] == [3, 3, 3, 3]
    first = list(read_records(out))
    assert [im.group for r in first for im in r.images] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [r.images[0].read() for r in first] == [(shapes_data / r.images[0]).read_bytes() for r in plain]
    write_parquet(out, iter(plain[::-1]), shapes_data)  # the same name, other rows: nothing stale is read
    assert [r.images[0].read() for r in read_records(out)] == [(shapes_data / r.images[0]).read_bytes()
                                                               for r in plain[::-1]]


def test_convert_unpacks_the_images_a_dataset_holds_into_a_folder(shapes_data, tmp_path):
    """parquet -> LLaVA JSON + image folder: files named as stored beside the bytes, the same bytes, other fields
    kept; rerunning reuses the files, and a different file already there is never overwritten."""
    data = packed(shapes_data, tmp_path, n=3)
    out, folder = tmp_path / "out.json", tmp_path / "unpacked"
    assert tools.convert_file(str(data), "llava", str(out), folder) == 3
    rows = json.loads(out.read_text())
    source = json.loads((shapes_data / "qa.json").read_text())[:3]
    assert [r["image"] for r in rows] == [r["image"] for r in source]
    assert all((folder / r["image"]).read_bytes() == (shapes_data / r["image"]).read_bytes() for r in rows)
    assert [r["category"] for r in rows] == ["shapes"] * 3
    assert tools.convert_file(str(data), "llava", str(out), folder) == 3 and json.loads(out.read_text()) == rows

    (folder / rows[0]["image"]).write_bytes(b"someone else's file")
    tools.convert_file(str(data), "llava", str(out), folder)
    first = json.loads(out.read_text())[0]
    assert first["image"] == f"{first['id']}_0.png" and (folder / rows[0]["image"]).read_bytes() == b"someone else's file"

    # names that would leave the folder, or one generic name for every image, give ID_K.EXT names
    table = [{"id": f"r/{i}", "images": [{"bytes": (shapes_data / s["image"]).read_bytes(), "path": path}],
              "conversations": s["conversations"]} for i, (s, path) in enumerate(zip(source, ["../x.png", "/x.png",
                                                                                             None]))]
    for i in (3, 4, 5):  # one generic name for different images; the last is the first image again
        image = (shapes_data / f"images/shape_0001{i}.png").read_bytes() if i < 5 else table[0]["images"][0]["bytes"]
        table.append({**table[0], "id": f"r/{i}", "images": [{"bytes": image, "path": "image.png"}]})
    tools.write_rows(tmp_path / "odd.parquet", table)
    tools.convert_file(str(tmp_path / "odd.parquet"), "sharegpt", str(tmp_path / "odd.json"), tmp_path / "odd")
    assert [r["images"] for r in json.loads((tmp_path / "odd.json").read_text())] == \
        [["r_0_0.png"], ["r_1_0.png"], ["r_2_0.png"], ["image.png"], ["r_4_0.png"], ["r_0_0.png"]]
    assert len(list((tmp_path / "odd").iterdir())) == 5
    uri = "data:image/png;base64," + base64.b64encode(table[1]["images"][0]["bytes"]).decode()
    messages = {"id": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]},
                                        {"role": "assistant", "content": "A circle."}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(messages) + "\n")
    tools.convert_file(str(tmp_path / "m.jsonl"), "llava", str(tmp_path / "m.json"), tmp_path / "odd")
    assert json.loads((tmp_path / "m.json").read_text())[0]["image"] == "m_0.png"  # data URIs unpack too
    assert (tmp_path / "odd/m_0.png").read_bytes() == table[1]["images"][0]["bytes"]
    table[0]["images"][0]["bytes"] = b"not an image"
    tools.write_rows(tmp_path / "bad.parquet", table[:1])
    with pytest.raises(LlavatuneError, match=r"bad.parquet:1: its image 1 cannot be decoded"):
        tools.convert_file(str(tmp_path / "bad.parquet"), "llava", str(tmp_path / "bad.json"), tmp_path / "bad")
    with pytest.raises(LlavatuneError, match=r"unpack them into a folder with `llavatune data convert"):
        tools.convert_file(str(data), "llava", str(tmp_path / "no.json"))
    with pytest.raises(LlavatuneError, match=r"images are unpacked into a folder here; name a local folder"):
        tools.convert_file(str(data), "llava", str(tmp_path / "no.json"), tmp_path / "images.zip")
    for folder in ("hf://datasets/someone/shapes/images", "hf://datasets/someone/shapes"):  # as Paths, from the CLI
        with pytest.raises(LlavatuneError, match=r"outputs are written here, not to the hub"):
            tools.convert_file(str(data), "llava", str(tmp_path / "no.json"), Path(folder))
