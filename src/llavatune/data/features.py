"""`vision_cache=true`: the frozen vision tower's features computed once, then read instead of images.

While the tower is frozen (stage 1 always, stage 2 unless `train_vision` or vision LoRA), every epoch decodes,
resizes and encodes the same images to the same features. They are computed once into `<out>/vision_cache/`: one
safetensors file per image, (image tokens, vision hidden) in the training dtype, named by a hash of the image's
reference in the data, plus `meta.json` saying which tower and settings made them; a cache made by another tower
or with other settings is refused. Size: tokens x hidden x 2 bytes per image (CLIP-L/336: 1.2 MB), so 1,000
images take 1.2 GB and LLaVA's 558K pre-training images 650 GB: for small and medium data sets.

Features are taken exactly where LLaVA's projector takes them (transformers' get_image_features with the
projector set aside), so training from them gives the losses of training from images (tests/data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llavatune import progress
from llavatune.data import images as imagelib
from llavatune.data.formats import DataError
from llavatune.data.tables import TableImage
from llavatune.errors import LlavatuneError
from llavatune.model.trainable import unwrap

META = "meta.json"


def key(ref: str | bytes | TableImage) -> str:
    """File stem of an image's features: a hash of its reference (path text, the bytes of an embedded one, or the
    place of one in a parquet / arrow file, which is not read for it)."""
    text = ref.identity() if isinstance(ref, TableImage) else ref
    return hashlib.sha1(text if isinstance(text, bytes) else text.encode()).hexdigest()


def fingerprint(model) -> dict:
    """What the features depend on: the tower's weights (a sum per tensor, cheap and order-sensitive enough to
    tell two towers apart), the feature layer and selection, and the image processor's settings."""
    llava = unwrap(model)
    tower = llava.model.vision_tower
    sums = [round(float(p.detach().float().sum()), 3) for p in tower.parameters()]
    return {"tower_sums": hashlib.sha1(json.dumps(sums).encode()).hexdigest(),
            "feature_layer": llava.config.vision_feature_layer,
            "select": llava.config.vision_feature_select_strategy}


def check(model, processor, folder: Path) -> None:
    """Refuse features made by another tower or with other settings; record ours for a new cache."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = json.loads(json.dumps({**fingerprint(model), "image_processor": processor.image_processor.to_dict()},
                                 default=str))
    meta_file = folder / META
    if meta_file.exists() and json.loads(meta_file.read_text()) != meta:
        raise LlavatuneError(f"{folder} holds vision features of another tower or other settings; delete it "
                             "(or choose another out) to compute them again.")
    meta_file.write_text(json.dumps(meta, indent=1))


def prepare(model, processor, dataset, folder: Path, device, dtype, rank: int = 0, world: int = 1,
            workers: int = 0, batch_size: int = 16) -> int:
    """Compute the features of the images of `dataset` not in `folder` yet, `batch_size` images per tower
    forward (rank r of `world` takes every world-th; `workers` processes decode the next images meanwhile);
    returns how many this rank computed. A missing or corrupt image is left out: the dataset skips or stops on
    it when the sample is drawn, as it would from images."""
    from llavatune.data.loader import in_workers  # loader -> dataset -> this module

    todo = {}
    for record in dataset.records:
        for ref in record.images:
            if not (folder / f"{key(ref)}.safetensors").exists():
                todo[key(ref)] = (ref, record.source)
    mine = sorted(todo)[rank::world]
    chunks = [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]
    bar = progress.bar(len(mine), "vision features", disable=not mine or rank != 0)
    decoded = in_workers(_Images(chunks, todo, dataset.image_dir, processor), workers)
    for chunk, (stems, pixels) in zip(chunks, decoded):
        if stems:
            for stem, feats in zip(stems, encode(model, pixels.to(device), dtype)):
                tmp = folder / f"{stem}.tmp"
                save_file({"features": feats.contiguous().cpu()}, str(tmp))
                tmp.replace(folder / f"{stem}.safetensors")  # atomic: a killed run never leaves half a file
        bar.update(len(chunk))
    bar.close()
    return len(mine)


class _Images(torch.utils.data.Dataset):
    """Chunk k of image stems -> (the stems that decoded, their pixel values (n, 3, H, W)); in a worker or not."""

    def __init__(self, chunks: list[list[str]], todo: dict, image_dir: Path | None, processor):
        self.chunks, self.todo, self.image_dir, self.processor = chunks, todo, image_dir, processor

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[list[str], torch.Tensor | None]:
        loaded = {}
        for stem in self.chunks[k]:
            ref, where = self.todo[stem]
            try:
                loaded[stem] = imagelib.load(ref, self.image_dir, where)
            except DataError:
                pass
        if not loaded:
            return [], None
        return list(loaded), imagelib.pixels(list(loaded.values()), self.processor.image_processor)


@torch.no_grad()
def encode(model, pixel_values: torch.Tensor, dtype) -> torch.Tensor:
    """(n, 3, H, W) -> (n, image tokens, vision hidden): transformers' own feature selection, projector set
    aside."""
    llava = unwrap(model).model
    projector = llava.multi_modal_projector
    llava.multi_modal_projector = torch.nn.Identity()
    try:
        with torch.autocast(pixel_values.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = llava.get_image_features(pixel_values.to(next(llava.vision_tower.parameters()).dtype),
                                           vision_feature_layer=llava.config.vision_feature_layer,
                                           vision_feature_select_strategy=llava.config.vision_feature_select_strategy)
    finally:
        llava.multi_modal_projector = projector
    return torch.stack(out.pooler_output).to(dtype or torch.float32)


def load(folder: Path, ref: str | bytes, where: str) -> torch.Tensor:
    """(image tokens, vision hidden) of one image; DataError naming the sample (`where`) when it has none (its
    image was missing or corrupt when the cache was made)."""
    path = folder / f"{key(ref)}.safetensors"
    if not path.exists():
        name = ref if isinstance(ref, str) else "embedded image"
        raise DataError(f"{where}: no cached features for image '{name}' in {folder}")
    return load_file(str(path))["features"]


def embed(model, batch: dict) -> dict:
    """A batch with `image_features` -> the same batch with `inputs_embeds`: token embeddings with the projected
    features written over the image tokens, as LLaVA's forward does with the tower's output."""
    llava = unwrap(model)
    ids = batch["input_ids"]                                                   # (B, T)
    embeds = llava.get_input_embeddings()(ids)                                 # (B, T, hidden)
    features = llava.model.multi_modal_projector(batch["image_features"])     # (n_images, tokens, hidden)
    image = (ids == llava.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(image, features.to(embeds.dtype))
    rest = {k: v for k, v in batch.items() if k not in ("input_ids", "image_features")}
    return {**rest, "inputs_embeds": embeds}
