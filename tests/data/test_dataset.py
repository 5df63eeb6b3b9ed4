"""The dataset's packed records: the records read from the file, in order, without the raw rows (nor the images
of a parquet file)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llavatune.data.dataset import Packed
from llavatune.data.formats import read_records


def test_packed_records_are_the_records_read(tmp_path):
    rows = [{"id": str(i), "image": f"img/{i}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i} \u00fc?"}, {"from": "gpt", "value": "x" * i}]}
        for i in range(50)]
    rows.append({"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]})
    (tmp_path / "d.json").write_text(json.dumps(rows))
    records = list(read_records(tmp_path / "d.json"))
    packed = Packed(read_records(tmp_path / "d.json"))
    assert len(packed) == 51 and packed[50].images == [] and packed[7].turns[1] == ("assistant", "xxxxxxx")
    assert list(packed) == [dataclasses.replace(r, raw=None) for r in records]  # raw rows stay out of memory
    with pytest.raises(IndexError):
        packed[51]


def test_images_inside_a_parquet_file_stay_there(tmp_path):
    """Packed records of a parquet file hold where each image is, not its bytes: a dataset of many GB of images
    is not copied into every rank and data worker. Read back they are the bytes written, with row groups of any
    size (7 rows; 300, read in batches of 256)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from llavatune.data.tables import TableImage

    def noise(seed: int) -> bytes:  # a PNG that does not compress: 12 KB
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    images = [noise(i) for i in range(300)]
    turns = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    table = pa.table({"id": [str(i) for i in range(300)], "image": [{"bytes": b, "path": None} for b in images],
                      "conversations": [turns] * 300})
    for group in (7, 300):
        pq.write_table(table, tmp_path / f"g{group}.parquet", row_group_size=group)
        packed = Packed(read_records(tmp_path / f"g{group}.parquet"))
        assert all(isinstance(im, TableImage) for r in packed for im in r.images)
        assert packed.buffer.nbytes < sum(map(len, images)) / 20
        assert [r.images[0].read() for r in packed] == images
