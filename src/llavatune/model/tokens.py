"""Special tokens a LLaVA needs: `<image>` and a pad that is not eos, with embeddings grown to fit."""

from __future__ import annotations

import torch

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"


def add_llava_tokens(tokenizer, llm) -> tuple[object, int]:
    """Add `<image>` (and `<pad>` when the tokenizer has no pad, or its pad is eos) to `tokenizer`, grow
    `llm`'s embeddings to fit, and set the rows of the new tokens to the mean of the existing rows.
    Returns the tokenizer and the image token id.

    Reusing eos as pad would mask eos out of the loss wherever padding is masked, and the model would never
    learn to stop, so a separate pad is always chosen."""
    n_before = len(tokenizer)
    specials = [IMAGE_TOKEN] if IMAGE_TOKEN not in tokenizer.get_vocab() else []
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = None
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, tokenizer.pad_token)]
    new_ids = sorted({i for i in new_ids if i >= n_before})
    grow_embeddings(llm, len(tokenizer), new_ids, n_before)
    tokenizer.image_token = IMAGE_TOKEN
    return tokenizer, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def grow_embeddings(llm, vocab: int, new_ids: list[int], n_old: int) -> None:
    """Resize to at least `vocab` rows; rows `new_ids` := mean of rows [0, n_old) (input and output side)."""
    if llm.get_input_embeddings().weight.shape[0] < vocab:
        llm.resize_token_embeddings(vocab, mean_resizing=False)
    if not new_ids:
        return
    with torch.no_grad():
        emb_in = llm.get_input_embeddings().weight
        emb_in[new_ids] = emb_in[:n_old].mean(0, keepdim=True).to(emb_in.dtype)
        out = llm.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb_in.data_ptr():
            out.weight[new_ids] = out.weight[:n_old].mean(0, keepdim=True).to(out.weight.dtype)
