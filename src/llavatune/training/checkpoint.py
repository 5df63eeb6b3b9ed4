"""Checkpoints: self-contained, written atomically, verified before resume.

A checkpoint folder holds the weights (a PEFT adapter that includes the projector, or the full model), the
processor, `run_config.yaml` (naming the base for adapters), `trainable.txt`, the trainer state (optimizer,
scheduler, RNG, data position) and, written last, `checkpoint.json`: the list of files with their sizes.
Only a folder whose manifest matches its files is ever resumed from, so a half-copied or truncated folder
is skipped; folders are built under a temporary name and renamed into place, so a crash never leaves a
checkpoint-N that looks complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from llavatune.model.save import write_atomically

MANIFEST = "checkpoint.json"
STATE = "trainer_state.pt"
_NAME = re.compile(r"checkpoint-(\d+)$")


def save(folder: Path, step: int, write_payload: Callable[[Path], None], state: dict) -> Path:
    def write(tmp: Path) -> None:
        write_payload(tmp)
        torch.save(state, tmp / STATE)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))

    return write_atomically(folder, overwrite=True, write=write)


def is_complete(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of checkpoint-N folders, newest first (complete or not)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*") if (m := _NAME.search(p.name))]
    return sorted(found, reverse=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, `final/` included (a finished run given more steps continues from its
    end); incomplete ones are passed over."""
    found = [(step, folder) for step, folder in checkpoints(run_dir) if is_complete(folder)]
    final = Path(run_dir) / "final"
    if is_complete(final):
        found.append((json.loads((final / MANIFEST).read_text())["step"], final))
    return max(found, key=lambda step_folder: step_folder[0], default=(0, None))[1]


def prune(run_dir: Path, keep_last: int, keep_step: int | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (0: keep all), and never the one of `keep_step` (the
    lowest held-out loss so far)."""
    if keep_last <= 0:
        return
    for step, folder in checkpoints(run_dir)[keep_last:]:
        if step != keep_step:
            shutil.rmtree(folder, ignore_errors=True)


def load_state(folder: Path) -> dict:
    return torch.load(folder / STATE, weights_only=False)
