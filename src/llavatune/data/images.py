"""Image files: resolve a row's path inside the image folder (never outside), open as RGB with EXIF
orientation applied. Pad-to-square and resizing are the processor's job (see model/compose.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from llavatune.data.formats import DataError


def resolve(ref: str, image_dir: Path | None, where: str) -> Path:
    """The file `ref` names, inside `image_dir`; a path that escapes the folder is an error."""
    if image_dir is None:
        raise DataError(f"{where}: the sample names image '{ref}' but no image folder was given (--images DIR).")
    root = os.path.abspath(image_dir)
    path = os.path.normpath(os.path.join(root, ref))  # lexical: fast on 665K rows, catches ../ and /abs paths
    if not path.startswith(root + os.sep):
        raise DataError(f"{where}: image path '{ref}' leaves the image folder {root}; image paths must be "
                        "relative to --images and stay inside it.")
    return Path(path)


def load(ref: str | bytes, image_dir: Path | None, where: str) -> Image.Image:
    """An RGB image, EXIF-rotated. Missing or undecodable files raise DataError naming the sample."""
    if isinstance(ref, bytes):
        source, name = io.BytesIO(ref), "embedded image"
    else:
        source = resolve(ref, image_dir, where)
        name = str(ref)
        if not source.is_file():
            raise DataError(f"{where}: image '{ref}' not found under {image_dir}.")
    try:
        with Image.open(source) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{where}: image '{name}' cannot be decoded ({err}).") from None


def check(ref: str | bytes, image_dir: Path | None, where: str) -> None:
    """Cheaper than load(): the file exists, stays in the folder, and its header and data verify."""
    if isinstance(ref, bytes):
        load(ref, image_dir, where)
        return
    path = resolve(ref, image_dir, where)
    if not path.is_file():
        raise DataError(f"{where}: image '{ref}' not found under {image_dir}.")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{where}: image '{ref}' cannot be decoded ({err}).") from None
