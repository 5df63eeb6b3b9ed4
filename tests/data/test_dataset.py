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


def test_training_asks_with_the_prompt_suffix_as_evaluation_does(tiny_model_dir, tmp_path):
    """prompt_suffix=short in a run adds LLaVA-1.5's instruction to every question of question/answer rows (the
    hub's sets hold none), as `eval --prompt-suffix short` asks them; a turn that has it already keeps one."""
    from transformers import AutoProcessor

    from llavatune.data.dataset import SupervisedDataset
    from llavatune.data.formats import SUFFIXES, with_suffix
    from llavatune.data.templates import get_template

    short = SUFFIXES["short"]
    rows = [{"question": "What colour is it?", "answer": "red"},
            {"conversations": [{"from": "human", "value": "Shape?" + short}, {"from": "gpt", "value": "square"},
                               {"from": "human", "value": "Size?"}, {"from": "gpt", "value": "small"}]}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    data = SupervisedDataset(tmp_path / "qa.jsonl", None, processor, get_template("vicuna_v1"), 0, 4, 512,
                             prompt_suffix="short")
    assert data.records[0].turns == [("user", "What colour is it?" + short), ("assistant", "red")]
    assert [said for role, said in data.records[1].turns if role == "user"] == ["Shape?" + short, "Size?" + short]
    assert "single word or phrase." in processor.tokenizer.decode(data[0].input_ids)
    record = next(read_records(tmp_path / "qa.jsonl"))
    assert with_suffix(record, "").turns == record.turns
    assert with_suffix(record, "\\nBe brief.").turns[0] == ("user", "What colour is it?\nBe brief.")
    assert with_suffix(record, "unanswerable").turns[0][1] == (  # LLaVA-1.5's VizWiz questions, to the byte
        "What colour is it?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\nAnswer the "
        "question using a single word or phrase.")
