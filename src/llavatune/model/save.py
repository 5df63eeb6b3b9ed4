"""Write a self-contained llava-hf folder atomically: everything goes to a temporary sibling, then one rename."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from llavatune.errors import LlavatuneError
from llavatune.hub import local_out


def check_out_dir(out: Path, overwrite: bool) -> None:
    """`out` is local (not a hub name) and new, empty, or to be replaced."""
    local_out(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise LlavatuneError(f"{out} exists and is not empty. Choose another --out, or pass --overwrite to replace it.")


LOW_SPACE = 1 << 30  # bytes left on a disk under which a failed write is said to be a full disk


def write_atomically(out: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a fresh temporary folder next to `out`, then move it into place.
    A crash half-way leaves `out` as it was (plus a `.tmp-*` folder that names itself as incomplete)."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except Exception as err:
        full = _full_disk(out, err)
        if full is None:
            raise
        raise full from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _full_disk(out: Path, err: Exception) -> LlavatuneError | None:
    """A write that failed with the disk (nearly) full, said as such: the writers say it each their own way (an
    OSError, torch's "file write failed", safetensors' StorageFull). None when there is room left."""
    free = shutil.disk_usage(out.parent).free
    if free >= LOW_SPACE:
        return None
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LlavatuneError(f"{out}: not written, {free / 2**20:,.0f} MB are left on its disk ({first}). Nothing "
                          "half-written stays, and what was there before is as it was. Free space and run again (a "
                          "training run continues from its last complete checkpoint with resume=auto).")


def save_model(model, processor, folder: Path, **kwargs) -> None:
    """model.save_pretrained(folder, **kwargs) and processor.save_pretrained(folder).

    Where DeepSpeed is installed, accelerate imports it on every save (to unwrap a DeepSpeed engine), and on a
    machine with no GPU DeepSpeed then warns that it could not detect one: tell it first that this is a CPU.
    transformers' "Writing model shards" bar is kept off: it drew a line at every checkpoint of a run, between
    the lines of the run's own progress, for a write that the run reports itself."""
    import torch

    from llavatune.progress import without_transformers_bars

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with without_transformers_bars():
        model.save_pretrained(folder, **kwargs)
    processor.save_pretrained(folder)


def save_pretrained_clean(model, processor, folder: Path) -> None:
    """save_model, with no `_name_or_path` pointing back at the folders the parts came from."""
    for cfg in (model.config, model.config.text_config, model.config.vision_config):
        cfg._name_or_path = ""
    save_model(model, processor, folder)
