"""attention=varlen: sample boundaries from position ids, each sample attending only to itself (a packed batch
through a model gives the padded batch's loss and gradients: tests/training/test_packing.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavatune.training import varlen


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
