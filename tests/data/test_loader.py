"""Batches made by worker processes are the batches the main process would make, in the same order."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from llavatune.data.dataset import SupervisedDataset, batch_order
from llavatune.data.loader import Batches, advance, positions
from llavatune.data.templates import get_template
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib


def dataset(model_dir, data_file, image_dir, on_bad_image="skip"):
    model, processor = loadlib.load_base(model_dir)
    return SupervisedDataset(data_file, image_dir, processor, get_template("vicuna_v1"), model.config.image_token_id,
                             model.config.image_seq_length, 2048, on_bad_image), processor.tokenizer.pad_token_id


def orders(n_rows: int, batch_size: int):
    return lambda epoch: batch_order([10] * n_rows, batch_size, epoch, group_by_length=False)


def test_positions_and_advance_cross_epochs():
    order = lambda epoch: [[epoch, k] for k in range(3)]  # 3 micro-batches per epoch
    stream = positions(order, 0, 2)
    assert [next(stream) for _ in range(4)] == [[0, 2], [1, 0], [1, 1], [1, 2]]
    assert advance(order, 0, 2, 1) == (0, 3)  # the epoch's end stays in that epoch until the next draw
    assert advance(order, 0, 2, 4) == (1, 3) and advance(order, 0, 3, 1) == (1, 1)
    assert list(positions(order, 0, 3).__next__()) == [1, 0]


@pytest.mark.parametrize("pack", [False, True])
def test_workers_make_the_same_batches_as_the_main_process(tiny_model_dir, shapes_data, tmp_path, pack):
    """Two ranks' shares over an epoch boundary, one sample missing its image: same tensors, same counts."""
    rows = json.loads((shapes_data / "qa.json").read_text())[:10]
    rows[3]["image"] = "images/missing.png"
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    order = orders(len(rows), 3)  # 4 micro-batches per epoch
    dropped = 0
    for rank in (0, 1):
        made = {}
        for workers in (0, 2):
            data, pad_id = dataset(tiny_model_dir, tmp_path / "qa.json", shapes_data)
            batches = Batches(data, order, 0, 1, pad_id, pack, world=2, rank=rank, workers=workers)
            made[workers] = [next(batches) for _ in range(5)], dict(data.skipped), data.first_dropped, data.served
            batches.close()
        (plain, skipped, first, served), (forked, *counts_w) = made[0], made[2]
        assert [skipped, first, served] == counts_w
        assert first == ({"bad image": f"{tmp_path / 'qa.json'}:4: image 'images/missing.png' not found under "
                                       f"{shapes_data}."} if skipped else {})
        dropped += skipped.get("bad image", 0)
        for a, b in zip(plain, forked):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drawn = itertools.islice(positions(order, 0, 1), 10)  # both ranks' micro-batches: each drop counted once
    assert dropped == sum(3 in batch for batch in drawn) >= 2


def test_a_worker_stopping_on_a_bad_image_names_it(tiny_model_dir, shapes_data, tmp_path):
    rows = json.loads((shapes_data / "qa.json").read_text())[:4]
    rows[2]["image"] = "images/missing.png"
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    data, pad_id = dataset(tiny_model_dir, tmp_path / "qa.json", shapes_data, on_bad_image="stop")
    batches = Batches(data, orders(4, 4), 0, 0, pad_id, workers=1)
    with pytest.raises(LlavatuneError, match="missing.png' not found.*on_bad_image=skip"):
        next(batches)
