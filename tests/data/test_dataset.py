"""The dataset's packed records: the records read from the file, in order, without the raw rows."""

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
