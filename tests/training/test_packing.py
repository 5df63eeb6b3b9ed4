"""Packed micro-batches (samples end to end, positions restarting, no padding) give the loss and gradients of
the padded ones, through SDPA and through the varlen kernel: no attention and no loss crosses a sample boundary."""

from __future__ import annotations

import pytest
import torch

from llavatune.data.dataset import SupervisedDataset, collate
from llavatune.data.templates import get_template
from llavatune.data.tokenize import IGNORE_INDEX
from llavatune.model import load as loadlib
from llavatune.model import trainable
from llavatune.train import LoraSpec
from llavatune.training import fast, varlen


def loss_and_grads(model, batch, n_items):
    model.zero_grad()
    loss = model(**batch, use_cache=False, num_items_in_batch=torch.tensor(n_items)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_packed_equals_padded(tiny_model_dir, shapes_data, monkeypatch, attention):
    """sdpa: a dense block-diagonal mask; varlen: per-sample boundaries (on CPU one SDPA per sample, which the
    spy sees), and a padded batch through it goes to SDPA with its mask."""
    model, processor = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "lora", LoraSpec(targets=["all"], dropout=0.0)).train()
    data = SupervisedDataset(shapes_data / "qa.json", shapes_data, processor, get_template("vicuna_v1"),
                             model.config.image_token_id, model.config.image_seq_length, 2048)
    items = [data[i] for i in range(5)]
    padded = collate(items, processor.tokenizer.pad_token_id)
    packed = collate(items, processor.tokenizer.pad_token_id, pack=True)
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].numel() == int(padded["attention_mask"].sum())
    n_items = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert n_items == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss_a, grads_a = loss_and_grads(model, padded, n_items)
    fast.set_attention(model, attention)
    calls, per_sample = [], varlen._per_sample
    monkeypatch.setattr(varlen, "_per_sample", lambda *a: calls.append(a[3]) or per_sample(*a))
    loss_b, grads_b = loss_and_grads(model, packed, n_items)
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-5) for n in grads_a)
    if attention == "varlen":
        assert calls[0] == [0, *torch.tensor([len(it.input_ids) for it in items]).cumsum(0).tolist()]
        calls.clear()
        assert torch.allclose(loss_and_grads(model, padded, n_items)[0], loss_a, atol=1e-6) and not calls
    else:
        assert not calls


def test_packing_trains_like_padding(tiny_model_dir, shapes_data, tmp_path):
    import json

    from conftest import train_config
    from llavatune.train import main as train

    runs = {}
    for pack in (False, True):
        out = tmp_path / f"pack-{pack}"
        train(train_config(tiny_model_dir, shapes_data, out, "steps=3", "lora.dropout=0", f"packing={pack}"))
        runs[pack] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(a - b) < 1e-4 for a, b in zip(runs[False], runs[True]))
