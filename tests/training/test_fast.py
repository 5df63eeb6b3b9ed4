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


def test_checkpoint_layers_sets_the_first_k(tiny_model_dir, monkeypatch):
    model, _ = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "lora", LoraSpec(targets=["all"]))
    fast.checkpoint_layers(model, 1)
    layers = fast.decoder_layers(model)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    # the checkpointed layer runs again in the backward pass, the other does not (counted in the MLP class's
    # forward: module hooks do not fire in the recompute)
    mlp_class, runs = type(layers[0].mlp), [0, 0]
    forward = mlp_class.forward

    def counted(self, x):
        runs[[layer.mlp for layer in layers].index(self)] += 1
        return forward(self, x)

    monkeypatch.setattr(mlp_class, "forward", counted)
    model.train()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert runs == [2, 1]
    with pytest.raises(LlavatuneError, match="decoder layers"):
        fast.checkpoint_layers(model, 5)


def test_pick_attention():
    assert fast.pick_attention("auto", torch.device("cpu"), packing=True) == "sdpa"
    assert fast.pick_attention("eager", torch.device("cpu"), packing=False) == "eager"


def test_layers_to_checkpoint_fills_the_budget():
    gib = 2**30
    # 20 GiB with every layer checkpointed, +1 GiB per layer left out (+10% margin), 2 GiB of optimizer to come
    assert fast.layers_to_checkpoint(32, 20 * gib, 21 * gib, 26 * gib, 2 * gib) == 29
    assert fast.layers_to_checkpoint(32, 20 * gib, 21 * gib, 21 * gib, 2 * gib) == 32   # over budget already
    assert fast.layers_to_checkpoint(32, 20 * gib, 21 * gib, 200 * gib, 0) == 0         # everything fits


def test_fit_checkpointing_probes_and_leaves_the_run_unchanged(tiny_model_dir, shapes_data, monkeypatch):
    """The probe's wiring, with the GPU's memory counter simulated (1 GiB + 0.25 GiB per layer left out of
    checkpointing): it measures all / all-but-one, sets the layers, drops its gradients, restores the RNG."""
    from llavatune.training import loop

    model, processor = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "lora", LoraSpec())
    data = SupervisedDataset(shapes_data / "qa.json", shapes_data, processor, get_template("vicuna_v1"),
                             model.config.image_token_id, model.config.image_seq_length, 2048)
    batch = collate([data[i] for i in range(2)], processor.tokenizer.pad_token_id)
    fast.checkpoint_layers(model, "auto")
    layers = fast.decoder_layers(model)
    gib = 2**30
    seen = []

    def peak(device):
        left_out = sum(not layer.gradient_checkpointing for layer in layers)
        seen.append(left_out)
        return gib + left_out * gib // 4

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 8 * gib}))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    before = torch.get_rng_state()
    reserve = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    budget = (gib + reserve + int(1.1 * gib // 4) + 1) / 2**30  # room for exactly one layer
    k = loop.fit_checkpointing(model, batch, budget, torch.device("cpu"), None)
    assert seen == [0, 1] and k == 1
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), before)


def test_auto_checkpointing_needs_a_gpu(tiny_model_dir, shapes_data, tmp_path):
    with pytest.raises(LlavatuneError, match="one CUDA GPU"):
        train(train_config(tiny_model_dir, shapes_data, tmp_path / "r", "steps=1", "gradient_checkpointing=true",
                           "checkpoint_layers=auto"))
