"""attention=varlen: sample boundaries from position ids, each sample attending only to itself; a packed batch
through it gives the padded batch's loss and gradients, and padded batches still run (through SDPA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavatune.data.dataset import SupervisedDataset, collate
from llavatune.data.templates import get_template
from llavatune.data.tokenize import IGNORE_INDEX
from llavatune.model import load as loadlib
from llavatune.model import trainable
from llavatune.train import LoraSpec
from llavatune.training import fast, varlen


def test_boundaries_from_positions():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = varlen.boundaries(positions, 1, 9)
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    # unpacked rows (batch 2, positions shared): one sample per row
    cu, longest = varlen.boundaries(torch.arange(4)[None], 2, 4)
    assert cu.tolist() == [0, 4, 8] and longest == 4
    # positions that continue a cache do not describe samples
    assert varlen.boundaries(torch.arange(5, 9)[None], 1, 4) is None


def test_attention_is_causal_within_each_sample_only():
    torch.manual_seed(0)
    lengths = [3, 5, 2]
    q, k, v = (torch.randn(1, 4, sum(lengths), 8) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped-query: 2 key/value heads for 4 query heads
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    out, _ = varlen.attention(None, q, k, v, None, scaling=0.3, position_ids=positions)  # (1, T, H, D)
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        ref = F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl].repeat_interleave(2, 1),
                                             v[:, :, sl].repeat_interleave(2, 1), is_causal=True, scale=0.3)
        assert torch.allclose(out[:, sl], ref.transpose(1, 2), atol=1e-6)
        start += n


def loss_and_grads(model, batch, n_items):
    model.zero_grad()
    loss = model(**batch, use_cache=False, num_items_in_batch=torch.tensor(n_items)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_through_varlen_equals_padded(tiny_model_dir, shapes_data, monkeypatch):
    model, processor = loadlib.load_base(tiny_model_dir)
    model = trainable.apply(model, "finetune", "lora", LoraSpec(targets=["all"], dropout=0.0)).train()
    data = SupervisedDataset(shapes_data / "qa.json", shapes_data, processor, get_template("vicuna_v1"),
                             model.config.image_token_id, model.config.image_seq_length, 2048)
    items = [data[i] for i in range(5)]
    padded = collate(items, processor.tokenizer.pad_token_id)
    packed = collate(items, processor.tokenizer.pad_token_id, pack=True)
    n_items = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    per_sample = varlen._per_sample
    loss_a, grads_a = loss_and_grads(model, padded, n_items)
    fast.set_attention(model, "varlen")
    assert model.config.text_config._attn_implementation == varlen.NAME
    calls = []
    monkeypatch.setattr(varlen, "_per_sample", lambda *a: calls.append(a[3]) or per_sample(*a))
    loss_b, grads_b = loss_and_grads(model, packed, n_items)
    assert calls and calls[0] == [0, *torch.tensor([len(it.input_ids) for it in items]).cumsum(0).tolist()]
    calls.clear()
    loss_c, _ = loss_and_grads(model, padded, n_items)  # a padding mask goes through SDPA
    assert not calls
    assert torch.allclose(loss_a, loss_b, atol=1e-5) and torch.allclose(loss_a, loss_c, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-5) for n in grads_a)
