"""`attention=varlen`: packed micro-batches through torch's own variable-length flash attention.

A packed row holds several samples end to end with position ids restarting at 0 (data/dataset.py). SDPA can only
run it with a dense (T, T) block-diagonal mask, computing every block between samples; flex_attention skips them
but is compiled, and timed out on the GPU (docs/benchmarks.md). torch.nn.attention.varlen.varlen_attn (recent
torch; CUDA, bf16/fp16) takes the samples' boundaries (cu_seqlens) and computes each sample's causal attention
alone, like flash-attn's varlen kernel, without the flash-attn package. Registered with transformers'
AttentionInterface under `NAME`.

Where that kernel cannot run (CPU, fp32) the same boundaries drive one SDPA call per sample: exact, and what the
tests compare against padded batches. Batches with a padding mask, and decoding with a KV cache, go to SDPA.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import torch
import torch.nn.functional as F

NAME = "llavatune_varlen"


def available() -> bool:
    """torch has the varlen kernel (the per-sample fallback needs nothing)."""
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def register() -> str:
    """Make `NAME` known to transformers (attention function and its mask); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def mask(*args, attention_mask=None, **kwargs):
        # no padding: the boundaries come from position ids in `attention` (a dense mask would cost (T, T))
        return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, mask)
    return NAME


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs):
    """transformers' attention signature: query (B, H, T, D), key/value (B, H_kv, T, D) -> ((B, T, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    plain = attention_mask is not None or position_ids is None or key.shape[2] != length or dropout > 0
    bounds = None if plain else boundaries(position_ids, batch, length)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    cu_seqlens, max_len = bounds
    if key.shape[1] != heads:  # grouped-query attention: one key/value head per group of query heads
        key = key.repeat_interleave(heads // key.shape[1], dim=1)
        value = value.repeat_interleave(heads // value.shape[1], dim=1)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))  # (B*T, H, D)
    scale = dim ** -0.5 if scaling is None else scaling
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        out = _flash(q, k, v, cu_seqlens, max_len, scale)
    else:
        out = _per_sample(q, k, v, cu_seqlens.tolist(), scale)
    return out.view(batch, length, heads, dim), None


_cached: tuple | None = None  # (position_ids, result): every layer of one forward (and its recompute) asks the same


def boundaries(position_ids: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, int] | None:
    """cu_seqlens (N + 1,) int32 over the flattened (B*T) tokens, and the longest sample; a sample starts wherever
    the position id is 0. None when a row does not start at 0 (then the positions do not describe samples)."""
    global _cached
    if _cached is not None and _cached[0] is position_ids:
        return _cached[1]
    flat = position_ids.expand(batch, length).reshape(-1)
    starts = (flat == 0).nonzero().squeeze(1)
    if not bool((flat[::length] == 0).all()):
        result = None
    else:
        cu_seqlens = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
        result = cu_seqlens, int(cu_seqlens.diff().max())
    _cached = (position_ids, result)
    return result


def _flash(q, k, v, cu_seqlens, max_len, scale):
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_params()
    # older torch spells causal `is_causal=True`, newer `window_size=(-1, 0)`
    extra = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "scale" in params:
        extra["scale"] = scale
    else:
        q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's default scale is 1/sqrt(D)
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **extra)


@functools.cache
def _varlen_params() -> frozenset[str]:
    """varlen_attn's keyword names, read once (every layer of every forward asks)."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _per_sample(q, k, v, cu: list[int], scale):
    """One causal SDPA per sample: (T_i, H, D) -> (H, T_i, D) and back."""
    outs = []
    for start, end in zip(cu[:-1], cu[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs)
