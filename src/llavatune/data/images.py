"""Image files: find a row's image inside the image folder or zip archive (never outside), or by its id in a table of
images (GQA's), open as RGB with EXIF orientation applied. Pad-to-square and resizing are the processor's job (see
model/compose.py); `pixels` does those two steps in PIL first, with the same result, because the processor is slow
at them on large photos."""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import posixpath
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llavatune import hub
from llavatune.data.formats import DataError, Record, read_records
from llavatune.data.tables import TableImage, iter_table, table_files

DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def key(ref: str | bytes | TableImage, root: Path | str | None = None) -> str | None:
    """A name to tell whether two rows show the same image, without opening either: the path (normalised; absolute
    when the image folder `root` is given, so that rows read with different folders compare), a digest of embedded
    bytes, the file name a table stores beside its image; None for a table image without one (its bytes are not
    read to compare them)."""
    if isinstance(ref, TableImage):
        return ref.path
    if isinstance(ref, bytes):
        return hashlib.blake2b(ref, digest_size=16).hexdigest()
    return posixpath.normpath(ref) if root is None else os.path.abspath(os.path.join(root, ref))


def shared(held_out: Iterable[Record], train: Iterable[Record], held_out_root: Path | str | None = None,
           train_root: Path | str | None = None) -> list[tuple[str, str]]:
    """(where, image key) for each held-out row that shows an image the training rows show too, the first such
    image named. `*_root`: the image folders the two sets' paths are relative to, when they may differ."""
    shown = [(record.source, [k for ref in record.images if (k := key(ref, held_out_root))]) for record in held_out]
    wanted = {name for _, names in shown for name in names}
    found = {k for record in train for ref in record.images if (k := key(ref, train_root)) in wanted}
    return [(where, next(n for n in names if n in found)) for where, names in shown if found.intersection(names)]


def resolve(ref: str, image_dir: Path | None, where: str) -> Path:
    """The file `ref` names, inside the folder `image_dir`; a path that escapes the folder is an error."""
    if image_dir is None:
        raise DataError(f"{where}: the sample names image '{ref}' but no image folder was given (--images DIR, or "
                        "images= in a run).")
    root = os.path.abspath(image_dir)
    path = os.path.normpath(os.path.join(root, ref))  # lexical: fast on 665K rows, catches ../ and /abs paths
    if not path.startswith(root + os.sep):
        raise _escapes(ref, root, where)
    return Path(path)


def source(ref: str | bytes | TableImage, image_dir: Path | None, where: str) -> Path | io.BytesIO:
    """What Image.open reads for `ref`: its file in the image folder, its member of the image zip archive (LLaVA-
    Pretrain's images.zip, read as it is), or the bytes the data holds. The folder or archive may be on the hub
    (hf://datasets/...). Missing, or outside the folder: a DataError naming the sample."""
    if not isinstance(ref, str):
        return io.BytesIO(embedded(ref, where))
    root, kind = _kind(image_dir)
    if kind == "table":
        index = _table_index(str(root))
        if ref not in index:
            example = next(iter(index), "nothing")
            raise DataError(f"{where}: image '{ref}' not found in {image_dir} (its ids look like '{example}').")
        return io.BytesIO(embedded(index[ref], where))
    if kind == "archive":
        member, archive = _member(ref, root, where), _open_archive(str(root), os.getpid())
        try:
            return io.BytesIO(archive.read(member))
        except KeyError:
            example = next((n for n in archive.namelist() if not n.endswith("/")), "nothing")
            raise DataError(f"{where}: image '{ref}' not found in {root} (its names look like '{example}').") from None
    path = resolve(ref, root, where)
    if not path.is_file():
        raise DataError(f"{where}: image '{ref}' not found under {image_dir}.")
    return path


def exists(ref: str, image_dir: Path | None, where: str) -> bool:
    """Whether `ref` names a file in the folder or archive (an error when it leaves it), without reading it."""
    root, kind = _kind(image_dir)
    if kind == "table":
        return ref in _table_index(str(root))
    if kind == "archive":
        return _member(ref, root, where) in _names(str(root), os.getpid())
    return resolve(ref, root, where).is_file()


def check_root(image_dir: Path | None, key: str = "images") -> None:
    """The image folder, zip archive or table exists: a typo found before a model is loaded, not as every sample
    dropped."""
    if image_dir is None:
        return
    root = hub.data_path(image_dir)
    if _is_image_table(root):
        if not table_files(root):
            raise DataError(f"{key}={image_dir}: no file matches.")
    elif not (root.is_dir() or _is_archive(root)):
        raise DataError(f"{key}={image_dir}: no such folder or .zip archive; give the folder (or archive) that the "
                        "data's image paths are relative to.")


def check_findable(data: Path | str, image_dir: Path | None, key: str = "images") -> None:
    """check_images on the data's first 1,000 rows."""
    check_images(itertools.islice(read_records(data, strict=False), 1000), image_dir, key)


def check_images(records: Iterable[Record], image_dir: Path | None, key: str = "images") -> None:
    """The image folder (or archive) exists (checked before `records` is read), is given if the rows name image
    files, and holds most of the images they name."""
    check_root(image_dir, key)
    records = list(records)
    check_folder_given(records, image_dir, key)
    check_most_found(records, image_dir, key)


def check_folder_given(records: Iterable[Record], image_dir: Path | None, key: str = "images") -> None:
    """Data that names image files needs the folder they are in: said before a model loads, not as every sample
    dropped. `records`: the rows to look at (a run looks at its first 1,000)."""
    if image_dir is not None:
        return
    for record in records:
        named = next((ref for ref in record.images if isinstance(ref, str)), None)
        if named is not None:
            raise DataError(f"{record.source}: the sample names image '{named}', but no image folder was given: "
                            f"{key}=DIR names the folder (or .zip archive) that the data's image paths are relative to "
                            "(or the table of images that its image ids are in).")


def check_most_found(records: list[Record], image_dir: Path | None, key: str = "images", sample: int = 50) -> None:
    """At least half of `sample` image files named by the rows, spread over them, are in the folder: a folder that
    the paths are not relative to is said before a model loads, not met as most samples dropped (a few missing
    images are for the run's on_bad_image to skip or stop on)."""
    if image_dir is None:
        return
    named = [(r.source, ref) for r in records for ref in r.images if isinstance(ref, str)]
    picked = named[::max(1, len(named) // sample)][:sample]
    missing = [(where, ref) for where, ref in picked if not _found(ref, image_dir, where)]
    if len(missing) * 2 > len(picked):
        where, ref = missing[0]
        raise DataError(f"{key}={image_dir}: {len(missing)} of {len(picked)} images checked are not there (the "
                        f"first: {where}: '{ref}'). {key} names the folder that the data's image paths are relative "
                        "to; `llavatune data validate DATA --images DIR` lists every missing image.")


def _found(ref: str, image_dir: Path, where: str) -> bool:
    try:
        return exists(ref, image_dir, where)
    except DataError:  # outside the folder: that sample's own error, when it is drawn
        return False


def _kind(image_dir: Path | None) -> tuple[Path | None, str]:
    """(the local root, "table" | "archive" | "folder") of an image folder argument, worked out once per folder
    and working directory rather than once per row (a quarter of `data validate`'s time on 665K rows)."""
    return (None, "folder") if image_dir is None else _kind_in(image_dir, os.getcwd())


@functools.lru_cache(maxsize=16)
def _kind_in(image_dir: Path | str, cwd: str) -> tuple[Path, str]:  # cwd: a relative folder moves with it
    root = hub.data_path(image_dir)
    if _is_image_table(root):
        return root, "table"
    if _is_archive(root):
        return root, "archive"
    return Path(os.path.abspath(root)), "folder"


def _is_image_table(root: Path | None) -> bool:
    """A parquet / arrow file or a pattern naming some, given as the image folder: images by id (GQA's)."""
    return root is not None and (hub.is_pattern(root) or root.suffix.lower() in (".parquet", ".arrow"))


@functools.lru_cache(maxsize=4)
def _table_index(root: str) -> dict[str, TableImage]:
    """Image id -> its image, in a table of images with columns `id` and `image` (lmms-lab/GQA's
    testdev_balanced_images, which its questions name by `imageId`); the scan reads the ids, not the bytes."""
    index = {}
    for n, row in iter_table(Path(root)):
        if row.get("id") is None or not isinstance(row.get("image"), TableImage):
            raise DataError(f"{hub.data_name(root)}:{n}: a table given as the image folder holds images by id, in "
                            f"columns 'id' and 'image' (bytes); found {', '.join(map(str, row)) or 'no columns'}.")
        index[str(row["id"])] = row["image"]
    return index


def _is_archive(root: Path | None) -> bool:
    return root is not None and root.suffix.lower() == ".zip" and root.is_file()


def _member(ref: str, archive: Path, where: str) -> str:
    member = posixpath.normpath(ref)
    if member == ".." or member.startswith(("../", "/")):
        raise _escapes(ref, archive, where)
    return member


@functools.lru_cache(maxsize=4)
def _open_archive(path: str, pid: int) -> zipfile.ZipFile:
    """One handle per archive and process: forked data workers must not share a file position."""
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable zip archive ({err}).") from None


@functools.lru_cache(maxsize=4)
def _names(path: str, pid: int) -> frozenset[str]:
    return frozenset(_open_archive(path, pid).namelist())


def _escapes(ref: str, root, where: str) -> DataError:
    return DataError(f"{where}: image path '{ref}' leaves the image folder {root}; image paths must be relative to "
                     "--images and stay inside it.")


def load(ref: str | bytes | TableImage, image_dir: Path | None, where: str) -> Image.Image:
    """An RGB image, EXIF-rotated. Missing or undecodable files raise DataError naming the sample."""
    file = source(ref, image_dir, where)
    try:
        return rgb(file)
    except DECODE_ERRORS as err:
        name = ref if isinstance(ref, str) else "embedded image"
        raise DataError(f"{where}: image '{name}' cannot be decoded ({err}).") from None


def rgb(file) -> Image.Image:
    """The image of a file or file object, upright (a phone photo's EXIF orientation applied) and RGB: what training
    sees, so that serving and chat see the same."""
    with Image.open(file) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def read_bytes(ref: str | bytes | TableImage, image_dir: Path | None, where: str) -> bytes:
    """The image file's bytes, as they are (for packing them into a parquet file)."""
    file = source(ref, image_dir, where)
    return file.read_bytes() if isinstance(file, Path) else file.getvalue()


def embedded(ref: bytes | TableImage, where: str) -> bytes:
    """The bytes of an image held in the data: given, or read from its parquet / arrow file."""
    if isinstance(ref, bytes):
        return ref
    try:
        return ref.read()
    except (OSError, ValueError, IndexError) as err:  # the file changed or went away since it was read
        raise DataError(f"{where}: its image in {ref.file} cannot be read ({err}).") from None


URL_MB = 50  # the most an image given by URL to chat or the Python API may weigh


def open_file(path: str | Path) -> Image.Image:
    """An image named by its own path or an http(s) URL, not relative to a data folder (chat, the Python API), read
    as load() reads training images."""
    if str(path).startswith(("http://", "https://")):
        raw = fetch(str(path), URL_MB << 20)
        if len(raw) > URL_MB << 20:
            raise DataError(f"{path}: larger than {URL_MB} MB; is it an image?")
        try:
            return rgb(io.BytesIO(raw))
        except DECODE_ERRORS as err:
            raise DataError(f"{path}: not a decodable image ({err}).") from None
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such image file.")
    return load(path.name, path.parent, str(path))


def check(ref: str | bytes | TableImage, image_dir: Path | None, where: str) -> None:
    """Cheaper than load(): the file exists, stays in the folder, and its header and data verify."""
    file = source(ref, image_dir, where)
    try:
        with Image.open(file) as img:
            img.verify()
    except DECODE_ERRORS as err:
        name = ref if isinstance(ref, str) else "embedded image"
        raise DataError(f"{where}: image '{name}' cannot be decoded ({err}).") from None


# The PIL-backend processors whose steps are: [pad to square (LLaVA only)], resize, the rest on the small image.
_PRESIZABLE = {"LlavaImageProcessorPil", "CLIPImageProcessorPil", "SiglipImageProcessorPil"}


def presize(image: Image.Image, image_processor) -> Image.Image:
    """The image after the processor's pad-to-square and resize, computed by PIL on 8-bit pixels.

    The PIL-backend processors do these steps on a numpy copy of the full image and hand it back to PIL to
    resize: 0.32 s of a core for a 12 MP photo. Here it is one paste and one resize, and the processor's own
    resize then meets the size it asks for, which PIL answers with a copy. The pixel values are identical
    (tests/data/test_images.py). Processors of other kinds, and geometry this does not know, pass unchanged."""
    ip, kind = image_processor, type(image_processor).__name__
    if kind not in _PRESIZABLE or image.mode != "RGB" or not ip.do_resize:
        return image
    if kind == "LlavaImageProcessorPil" and ip.do_pad:  # LLaVA-1.5 expand2square
        image = _pad_to_square(image, tuple(int(x * 255) for x in ip.image_mean) if ip.image_mean else (0, 0, 0))
    size = _resized(image.height, image.width, ip.size)
    if size is None:
        return image
    resample = ip.resample if ip.resample is not None else Image.Resampling.BILINEAR
    return image.resize((size[1], size[0]), resample=resample)


def pixels(images: list[Image.Image], image_processor) -> "torch.Tensor":
    """(n, 3, H, W) pixel values for the tower, as the processor makes them."""
    return image_processor([presize(im, image_processor) for im in images], return_tensors="pt")["pixel_values"]


def _pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """The processor's pad_to_square: the image centred (offset rounded down) on a square of `colour`."""
    if image.width == image.height:
        return image
    side = max(image.size)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def _resized(height: int, width: int, size) -> tuple[int, int] | None:
    """(height, width) the processor's resize picks (its branches, in its order); None where that is not
    one of the two geometries used here."""
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    if size.shortest_edge and size.longest_edge:
        return None
    if size.shortest_edge:
        shape = np.broadcast_to(np.uint8(0), (3, height, width))  # no memory: only its shape is read
        return tuple(get_resize_output_image_size(shape, size.shortest_edge, default_to_square=False,
                                                  input_data_format=ChannelDimension.FIRST))
    if size.height and size.width and not (size.max_height and size.max_width):
        return size.height, size.width
    return None


def fetch(url: str, limit: int) -> bytes:
    """The first limit + 1 bytes at an http(s) URL (more than `limit`: too large, for the caller to say)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http(s) only, checked by callers)
            return response.read(limit + 1)
    except urllib.error.HTTPError as err:
        raise DataError(f"{url}: cannot be downloaded (HTTP {err.code} {err.reason}).") from None
    except (OSError, ValueError) as err:  # no connection (urllib's URLError), a timeout, a malformed URL
        raise DataError(f"{url}: cannot be downloaded ({getattr(err, 'reason', None) or err}).") from None
