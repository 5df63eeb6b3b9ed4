"""The Hugging Face hub as a source of folders and files, downloaded once into the hub cache, or found there offline
(HF_HUB_OFFLINE=1), then read like any other path.

Models are named by their id (`llava-hf/llava-1.5-7b-hf`); only what a model needs comes down: configs, tokenizer
files and safetensors weights; pickled `.bin` weights only for repositories that have no safetensors (the original
LLaVA releases). Data is named as huggingface_hub's file system names it, `hf://datasets/ORG/NAME[@REVISION]/PATH`
(a file, or a folder of parquet/arrow shards); only PATH comes down."""

from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path, PurePosixPath

from llavatune.errors import LlavatuneError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_DATA = re.compile(r"hf:/+datasets/([\w.-]+/[\w.-]+)(?:@([^/]+))?/(.+)")  # ORG/NAME, revision, path
HUB_DATASET = re.compile(r"hf:/+datasets/([\w.-]+/[\w.-]+)(?:@([^/]+))?/?")  # a whole dataset, no path in it
TEXT_FILES = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
DATA_SUFFIXES = (".json", ".jsonl", ".tsv", ".parquet", ".arrow")


def is_hub_id(ref: str | Path) -> bool:
    """'org/name' that is not a path here. A path whose parent folder exists here (runs/tiny-lroa with runs/
    present) is a mistyped local path, not a hub id, and is not looked up on the network."""
    ref = str(ref)
    return bool(HUB_ID.fullmatch(ref)) and not Path(ref).exists() and not Path(ref).parent.is_dir()


def local_copy(repo_id: str, revision: str | None = None, download: bool = True, weights: bool = True) -> Path:
    """The folder of a hub model in the cache, downloading what is missing (download=False: the cache only;
    weights=False: configs and tokenizer files only, for `info`)."""
    what = f"{repo_id}: no such folder here, and the Hugging Face hub did not provide it"
    folder = _snapshot(repo_id, what, revision=revision, download=download,
                       allow_patterns=[*TEXT_FILES, *(["*.safetensors"] if weights else [])])
    if weights and not any(folder.rglob("*.safetensors")):
        folder = _snapshot(repo_id, what, revision=revision, download=download, allow_patterns=[*TEXT_FILES, "*.bin"])
    return folder


@functools.lru_cache(maxsize=1024)
def data_path(ref: str | Path) -> Path:
    """`hf://datasets/ORG/NAME[@REVISION]/PATH` as the local path of PATH in the hub cache (downloaded once, and
    looked up once per process: a run names its data several times); any other path as it is. A typed config holds
    the reference as a Path, which reads `hf:/datasets/...`."""
    if whole := HUB_DATASET.fullmatch(str(ref)):
        raise _whole_dataset(ref, whole.group(1), whole.group(2))
    match = HUB_DATA.fullmatch(str(ref))
    if not match:
        return Path(ref)
    repo_id, revision, inner = match.group(1), match.group(2), match.group(3).rstrip("/")
    folder = _snapshot(repo_id, f"{data_name(ref)}: the Hugging Face hub did not provide it", repo_type="dataset",
                       revision=revision, allow_patterns=[inner] if is_pattern(inner) else [inner, f"{inner}/*"])
    if not (any(folder.glob(inner)) if is_pattern(inner) else (folder / inner).exists()):
        raise LlavatuneError(f"{data_name(ref)}: the hub dataset {repo_id} has no file or folder {inner!r} (at "
                             f"revision {revision_of(folder)}); the path after the dataset name is the file's path in it.")
    return folder / inner


@functools.lru_cache(maxsize=16)
def data_shards(ref: str | Path) -> tuple[str, ...] | None:
    """The parquet / arrow files of a hub data folder or pattern (hf://datasets/ORG/NAME/data/validation-*.parquet),
    in the order a local folder or pattern reads them, each as a reference of its own: read one after the other, each
    comes down when the reading reaches it (`eval --limit 100` of a split of 60 shards downloads one). None for a
    single file, offline, or when the hub cannot be asked (data_path then says why, or finds the files in the
    cache)."""
    match = HUB_DATA.fullmatch(str(ref))
    if not match:
        return None
    repo_id, revision, inner = match.group(1), match.group(2), match.group(3).rstrip("/")
    if not is_pattern(inner) and PurePosixPath(inner).suffix.lower() in DATA_SUFFIXES:
        return None  # one file
    names = _listing(repo_id, revision)
    if names is None:
        return None
    if is_pattern(inner):
        files = sorted(n for n in names if matches(n, PurePosixPath(inner)))
    else:
        files = sorted(n for n in names if PurePosixPath(inner) in n.parents)
    files = [f for f in files if f.suffix.lower() == ".parquet"] + [f for f in files if f.suffix.lower() == ".arrow"]
    at = f"@{revision}" if revision else ""  # not the commit listed: a download by branch records the branch's
    return tuple(f"hf://datasets/{repo_id}{at}/{f}" for f in files) or None  # commit, which an offline run reads


def _whole_dataset(ref: str | Path, repo_id: str, revision: str | None) -> LlavatuneError:
    """A dataset named without a path in it: its splits (and subsets) are files, and which to read is the user's
    choice. The error lists them as patterns where the hub answers."""
    name = data_name(ref).rstrip("/")
    patterns = split_patterns(_listing(repo_id, revision) or [])
    head = f"{name} names a whole dataset: name the file, folder or files of one split in it, for example {name}/"
    if not patterns:
        return LlavatuneError(f"{head}data/validation-*.parquet (its files: "
                              f"https://huggingface.co/datasets/{repo_id}/tree/main).")
    more = ", ..." if len(patterns) > 8 else ""
    return LlavatuneError(f"{head}{patterns[0]}; its data files: {', '.join(patterns[:8])}{more}.")


def _listing(repo_id: str, revision: str | None) -> list[PurePosixPath] | None:
    """The files of a hub dataset; None offline, or when the hub cannot be asked for any reason (the hub's, or the
    network's, which huggingface_hub raises through httpx or httpx2 by its version): a download then says why."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        info = HfApi().dataset_info(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 (a listing only spares downloads; its failure is reported by the download)
        return None
    return [PurePosixPath(s.rfilename) for s in info.siblings or []]


def split_patterns(names: list[PurePosixPath]) -> list[str]:
    """A dataset's data files as one pattern per split: data/test-00000-of-00003.parquet, ... -> data/test-*.parquet;
    a split kept in a folder per subject (MMMU's Art/validation-..., Math/validation-...) -> */validation-*.parquet."""
    folders: dict[str, set[PurePosixPath]] = {}
    for name in names:
        if name.suffix.lower() in DATA_SUFFIXES:
            shard = re.sub(r"-\d+(-of-\d+)?$", "-*", name.stem) + name.suffix
            folders.setdefault(shard, set()).add(name.parent)
    patterns = []
    for shard, parents in sorted(folders.items()):
        depths = {len(p.parts) for p in parents}
        if len(parents) > 1 and len(depths) == 1:
            patterns.append(str(PurePosixPath(*["*"] * depths.pop(), shard)))
        else:
            patterns += [str(p / shard) for p in sorted(parents)]
    return patterns


def is_pattern(path: str | Path) -> bool:
    """A path with a glob pattern in it: the shards of one split of a dataset whose splits share a folder
    (data/validation-*.parquet), or that split in every folder of a dataset kept by subject (MMMU's
    */validation-*.parquet). A file that exists under that very name ("qa [copy].json") is that file."""
    return any(c in part for part in Path(path).parts for c in "*?[") and not Path(path).exists()


def split_pattern(path: Path) -> tuple[Path, str]:
    """(the folder before the first part with a pattern, the rest): what Path.glob takes."""
    parts = Path(path).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    return Path(*parts[:first]) if first else Path("."), "/".join(parts[first:])


def matches(name: PurePosixPath, pattern: PurePosixPath) -> bool:
    """Each part of `name` matches that part of `pattern`: a '*' stays within a folder, as in Path.glob."""
    return len(name.parts) == len(pattern.parts) and all(map(fnmatch.fnmatchcase, name.parts, pattern.parts))


def is_hub_data(ref: str | Path) -> bool:
    """A name on the hub (hf://...; a Path folds it to hf:/...), whether or not it names data that can be read."""
    return str(ref).startswith("hf:/")


def data_name(ref: str | Path) -> str:
    """A hub data reference as huggingface_hub writes it (a Path folds its 'hf://' to 'hf:/')."""
    return re.sub(r"^hf:/+", "hf://", str(ref))


def local_out(path: str | Path) -> str | Path:
    """An output path as given, refused when it names the hub: llavatune reads from the hub but writes only here,
    and a Path would quietly turn `hf://datasets/x` into the local folder `hf:/datasets/x`."""
    if is_hub_data(path):
        raise LlavatuneError(f"{data_name(path)}: outputs are written here, not to the hub. Give a local path, then "
                             "upload the result with `hf upload ORG/NAME PATH` (data: `--repo-type dataset`) if it "
                             "should be on the hub.")
    return path


def data_revision(local: Path) -> str | None:
    """The commit of the hub-cache dataset snapshot that `local` (a data_path) lies in."""
    for folder in Path(local).parents:
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("datasets--"):
            return folder.name
    return None


def _snapshot(repo_id: str, what: str, download: bool = True, **kwargs) -> Path:
    """snapshot_download, with its failures as one LlavatuneError that starts with `what`."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # offline, say so: huggingface_hub 1.x asked the network for a commit's file list even with HF_HUB_OFFLINE=1
    cache_only = not download or constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(repo_id, local_files_only=cache_only, **kwargs))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LlavatuneError(f"{what} ({reason}). Check the id (or the path), HF_TOKEN for gated repositories, and "
                             "the network; offline (HF_HUB_OFFLINE=1) only what is in the hub cache loads.") from None


def revision_of(folder: Path) -> str | None:
    """The commit a hub-cache snapshot folder holds (…/snapshots/<sha>), else None."""
    folder = Path(folder)
    return folder.name if folder.parent.name == "snapshots" else None


def repo_of(folder: Path) -> str | None:
    """The repo id of a hub-cache snapshot folder (…/models--ORG--NAME/snapshots/<sha>), else None. Hub ids cannot
    hold '--', so the folder name splits back unambiguously."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if revision_of(folder) is None or not repo.startswith("models--"):
        return None
    return repo.removeprefix("models--").replace("--", "/")


def remote_weights(repo_id: str, revision: str) -> tuple[dict[str, tuple[list[int], str]], dict[str, int]]:
    """(tensor name -> (shape, dtype), weight file -> bytes) of a hub model, read from its safetensors headers on
    the hub (a few KB per file) instead of downloading the weights."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError, OfflineModeIsEnabled

    api = HfApi()
    try:
        meta = api.get_safetensors_metadata(repo_id, revision=revision)
        sizes = {f.path: f.size for f in api.get_paths_info(repo_id, sorted(meta.files_metadata), revision=revision)}
    except NotASafetensorsRepoError:
        raise LlavatuneError(f"{repo_id}: no safetensors weights on the hub (is this a llava-hf checkpoint? an "
                             "original LLaVA release converts with `llavatune convert`).") from None
    except OfflineModeIsEnabled:
        raise LlavatuneError(f"{repo_id}: its weights are not in the hub cache, and offline (HF_HUB_OFFLINE=1) their "
                             "headers cannot be read from the hub.") from None
    except (HfHubHTTPError, OSError) as err:
        raise LlavatuneError(f"{repo_id}: could not read its weights' headers from the hub ({err}).") from None
    shapes = {name: (list(t.shape), t.dtype) for file in meta.files_metadata.values() for name, t in file.tensors.items()}
    return shapes, sizes
