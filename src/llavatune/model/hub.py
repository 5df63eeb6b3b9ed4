"""Models named by a Hugging Face hub id (`llava-hf/llava-1.5-7b-hf`) become local folders: downloaded once into
the hub cache, or found there offline (HF_HUB_OFFLINE=1), then read like any other folder. Only what a model
needs comes down: configs, tokenizer files and safetensors weights; pickled `.bin` weights only for repositories
that have no safetensors (the original LLaVA releases)."""

from __future__ import annotations

import re
from pathlib import Path

from llavatune.errors import LlavatuneError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TEXT_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def is_hub_id(ref: str | Path) -> bool:
    """'org/name' that is not a path here. A path whose parent folder exists here (runs/tiny-lroa with runs/
    present) is a mistyped local path, not a hub id, and is not looked up on the network."""
    ref = str(ref)
    return bool(HUB_ID.fullmatch(ref)) and not Path(ref).exists() and not Path(ref).parent.is_dir()


def local_copy(repo_id: str, revision: str | None = None, download: bool = True) -> Path:
    """The folder of a hub model in the cache, downloading what is missing (download=False: the cache only)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # offline, say so: huggingface_hub 1.x asked the network for a commit's file list even with HF_HUB_OFFLINE=1
    cache_only = not download or constants.HF_HUB_OFFLINE
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=cache_only,
                                        allow_patterns=[*TEXT_FILES, "*.safetensors"]))
        if not any(folder.rglob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=cache_only,
                                            allow_patterns=[*TEXT_FILES, "*.bin"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LlavatuneError(f"{repo_id}: no such folder here, and the Hugging Face hub did not provide it "
                             f"({reason}). Check the id (or the path), HF_TOKEN for gated models, and the network; "
                             "offline (HF_HUB_OFFLINE=1) only models already in the hub cache load.") from None
    return folder


def revision_of(folder: Path) -> str | None:
    """The commit a hub-cache snapshot folder holds (…/snapshots/<sha>), else None."""
    folder = Path(folder)
    return folder.name if folder.parent.name == "snapshots" else None
