"""The fast path's switches change speed and memory, never the numbers: the targets-only loss equals the model's
own loss and gradients; selective checkpointing and the attention switch train to the same losses."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import train_config
from llavatune.data.dataset import SupervisedDataset, collate
from llavatune.data.templates import get_template
from llavatune.data.tokenize import IGNORE_INDEX
from llavatune.errors import LlavatuneError
from llavatune.model import load as loadlib
from llavatune.model import trainable
from llavatune.train import LoraSpec
from llavatune.train import main as train
from llavatune.training import fast


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pack", [False, True])
def test_targets_loss_equals_the_models_loss(tiny_model_dir, shapes_data, pack):
    model, processor = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "full").train()
    data = SupervisedDataset(shapes_data / "qa.json", shapes_data, processor, get_template("vicuna_v1"),
                             model.config.image_token_id, model.config.image_seq_length, 2048)
    batch = collate([data[i] for i in range(4)], processor.tokenizer.pad_token_id, pack=pack)
    n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) + 7  # as if other micro-batches shared the step
    reference = model(**batch, use_cache=False, num_items_in_batch=torch.tensor(n_items)).loss
    ours = fast.targets_loss(model, batch, n_items)
    assert torch.allclose(reference, ours, atol=1e-6)
    g_ref, g_ours = grads(model, reference), grads(model, ours)
    assert g_ref.keys() == g_ours.keys() and "lm_head.weight" in g_ref
    assert all(torch.allclose(g_ref[n], g_ours[n], atol=1e-6) for n in g_ref)


def test_switches_keep_the_loss_curve(tiny_model_dir, shapes_data, tmp_path):
    runs = {}
    for name, extra in {"plain": [], "selective": ["gradient_checkpointing=true", "checkpoint_layers=1"],
                        "eager": ["attention=eager", "packing=true"]}.items():
        out = tmp_path / name
        train(train_config(tiny_model_dir, shapes_data, out, "steps=3", "lora.dropout=0", *extra))
        runs[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(runs["plain"]) == 3
    for name in ("selective", "eager"):
        assert all(abs(a - b) < 1e-4 for a, b in zip(runs["plain"], runs[name])), (name, runs)


def test_checkpoint_layers_sets_the_first_k(tiny_model_dir):
    model, _ = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "lora", LoraSpec())
    fast.checkpoint_layers(model, 1)
    assert [layer.gradient_checkpointing for layer in fast.decoder_layers(model)] == [True, False]
    with pytest.raises(LlavatuneError, match="decoder layers"):
        fast.checkpoint_layers(model, 5)


def test_pick_attention():
    assert fast.pick_attention("auto", torch.device("cpu"), packing=True) == "sdpa"
    assert fast.pick_attention("eager", torch.device("cpu"), packing=False) == "eager"
