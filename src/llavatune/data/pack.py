"""Images into and out of data files: rows packed with their image files into one parquet file (HF datasets'
Image layout, so the file trains and evaluates anywhere, a hub dataset too), and the images a dataset holds
unpacked into a folder, for tools that want LLaVA JSON and image files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import posixpath
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from llavatune import hub, progress
from llavatune.data import images as imagelib
from llavatune.data.formats import DataError, Record, llava_row
from llavatune.data.tables import TableImage, stored_path
from llavatune.errors import LlavatuneError


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name to write, renamed to `path` at the end: a reader never sees half a file, and a failed
    write leaves nothing behind."""
    hub.local_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


GROUP_BYTES = 4 << 20  # image bytes per parquet row group: a sample's image is read with its whole group


def write_parquet(path: Path | str, records: Iterable[Record], image_dir: Path | None, chunk: int = 256,
                  columns=None) -> int:
    """LLaVA rows with their image files inside, as HF datasets keeps images ({"bytes", "path"}, declared as its
    Image feature): one file that trains anywhere, from a hub dataset too. A row's other fields (question_id,
    category, answers, ...) become columns: `columns` (see column_types), or those of the first `chunk` rows.
    Written atomically, in row groups of at most `chunk` rows and about GROUP_BYTES of images: drawing one sample
    reads its group, 21 ms for a 99 KB photo in a group of 256 rows, 3.4 ms in one of 4 MB (docs/data.md). The
    files' bytes go in as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = (_embedded(r, image_dir) for r in records)
    first = list(itertools.islice(rows, chunk))
    text = {"dtype": "string", "_type": "Value"}
    features = {"id": text, "images": [{"_type": "Image"}], "conversations": [{"from": text, "value": text}]}
    schema = pa.schema([("id", pa.string()),
                        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))])
    if columns is None:
        columns = column_types({k: v for k, v in row.items() if k not in schema.names} for _, row in first)
    schema = pa.schema([*schema, *columns], metadata={"huggingface": json.dumps({"info": {"features": features}})})
    n = 0
    bar = progress.bar(None, f"packing {Path(path).name}", unit="row")  # reading every image file: hours for 665K
    with atomic_file(Path(path)) as tmp, pq.ParquetWriter(tmp, schema) as writer, bar:
        for group in _groups(itertools.chain(first, rows), chunk):
            for where, row in group:
                if set(row) - set(schema.names):
                    raise DataError(f"{where}: field(s) {', '.join(sorted(set(row) - set(schema.names)))} not in "
                                    f"the first {chunk} rows, which set the parquet file's columns.")
            try:
                writer.write_table(pa.Table.from_pylist([row for _, row in group], schema=schema))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise DataError(f"{group[0][0]} or one of the {len(group) - 1} rows after it: a field's type differs "
                                f"from the first {chunk} rows' ({err}).") from None
            n += len(group)
            bar.update(len(group))
    return n


def _groups(rows: Iterable[tuple[str, dict]], most: int) -> Iterator[list[tuple[str, dict]]]:
    """The rows in lists of at most `most` rows, each closed once its images reach GROUP_BYTES."""
    group, held = [], 0
    for where, row in rows:
        group.append((where, row))
        held += sum(len(image["bytes"]) for image in row["images"])
        if len(group) == most or held >= GROUP_BYTES:
            yield group
            group, held = [], 0
    if group:
        yield group


def column_types(fields: Iterable[dict]):
    """The parquet columns for rows' other fields: every field that any row has, typed over all of its values (a
    row without it holds null there). A field whose values have no common type is an error naming it."""
    import pyarrow as pa

    fields = list(fields)
    columns = []
    for name in dict.fromkeys(k for row in fields for k in row):
        try:
            columns.append(pa.field(name, pa.array([row.get(name) for row in fields]).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"field '{name}' holds values of different types ({err}); give it one type in every row "
                            "to write it as a parquet column.") from None
    return pa.schema(columns)


def _embedded(record: Record, image_dir: Path | None) -> tuple[str, dict]:
    """(file:row, the parquet row: the LLaVA row with the bytes of its images, and its other fields)."""
    images = []
    for k, ref in enumerate(record.images):
        if isinstance(ref, str) and image_dir is None:
            raise DataError(f"{record.source}: image '{ref}' is a file; packing files into a parquet file needs their "
                            "folder: llavatune data convert DATA --images DIR --out NAME.parquet")
        images.append({"bytes": imagelib.read_bytes(ref, image_dir, record.source),
                       "path": ref if isinstance(ref, str) else _stored_path(record, k)})
    return record.source, {**llava_row(dataclasses.replace(record, images=[])), "images": images}


def _stored_path(record: Record, k: int) -> str | None:
    """The file name stored beside the k-th image's bytes, when the row has one."""
    if isinstance(record.images[k], TableImage):
        return stored_path(record.images[k])
    raw = record.raw or {}
    value = raw.get("image", raw.get("images"))
    items = value if isinstance(value, list) else [value]
    return stored_path(items[k]) if k < len(items) else None


def unpack(records: Iterable[Record], image_dir: Path) -> Iterator[Record]:
    """The records with the images they hold (bytes) written as files into `image_dir` and named by those files:
    the name stored beside the bytes where it is a safe relative path, else ID_K.EXT. An image met again (the same
    bytes) reuses its file; a file already there with other content is never overwritten: the image takes the
    next free name. The count goes to stderr at the end."""
    root = Path(hub.local_out(image_dir))
    if root.suffix.lower() == ".zip":
        raise LlavatuneError(f"--images {image_dir}: images are unpacked into a folder here; name a local folder.")
    files: dict[str, str] = {}  # sha256 of an image's bytes -> its file, for the images met in this run
    taken: set[str] = set()     # names known to hold other bytes
    with progress.bar(None, f"unpacking into {root}", unit="row") as bar:
        for record in records:
            refs = [ref if isinstance(ref, str) else _unpacked(record, k, ref, root, files, taken)
                    for k, ref in enumerate(record.images)]
            bar.update()
            yield dataclasses.replace(record, images=refs)
    if files:
        print(f"unpacked {len(files):,} images into {root}", file=sys.stderr)


def _unpacked(record: Record, k: int, ref, root: Path, files: dict[str, str], taken: set[str]) -> str:
    data = imagelib.embedded(ref, record.source)
    digest = hashlib.sha256(data).hexdigest()
    if digest in files:
        return files[digest]
    for name in _file_names(record, k, data):
        file = root / name
        if name in taken or (file.exists() and hashlib.sha256(file.read_bytes()).hexdigest() != digest):
            taken.add(name)
            continue
        if not file.exists():
            with atomic_file(file) as tmp:
                tmp.write_bytes(data)
        files[digest] = name
        taken.add(name)
        return name


def _file_names(record: Record, k: int, data: bytes) -> Iterator[str]:
    """Names to try for the record's k-th image: the stored one (if it stays inside the folder), then ID_K.EXT,
    then ID_K-1.EXT, ID_K-2.EXT, ..."""
    stored = _stored_path(record, k)
    if stored and not stored.startswith(("/", "\\")) and ":" not in stored:
        name = posixpath.normpath(stored.replace("\\", "/"))
        if name != ".." and not name.startswith(("../", ".")):
            yield name
    try:
        with Image.open(io.BytesIO(data)) as img:
            ext = {"JPEG": ".jpg", "TIFF": ".tif"}.get(img.format, f".{(img.format or 'img').lower()}")
    except imagelib.DECODE_ERRORS as err:
        raise DataError(f"{record.source}: its image {k + 1} cannot be decoded ({err}).") from None
    stem = re.sub(r"[^\w.-]", "_", record.id).lstrip(".") or "row"
    yield f"{stem}_{k}{ext}"
    yield from (f"{stem}_{k}-{n}{ext}" for n in itertools.count(1))
