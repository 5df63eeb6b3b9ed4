"""Parquet / arrow tables, the layouts of HF datasets: their files (a file, a folder of shards, or a pattern naming
some), their rows with each image as a TableImage placeholder, and the image read when a sample is drawn. The bytes
stay in the file: a dataset of many GB is neither held in memory nor read through when its rows are read."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
from pathlib import Path
from typing import Iterator

from llavatune import hub
from llavatune.errors import DataError


@dataclasses.dataclass(frozen=True)
class TableImage:
    """An image inside a parquet / arrow file, read when it is opened. Records hold these instead of the bytes: a
    dataset of many GB of images stays on disk, where every rank and data worker would otherwise hold all of it."""
    file: str
    group: int    # the parquet row group, or arrow record batch
    row: int      # the row within it
    column: str   # "image" or "images"
    k: int        # which image of the row
    path: str | None = None  # the file name HF datasets stores beside the bytes, if any

    def read(self) -> bytes:
        stat = os.stat(self.file)  # a file written anew under the same name is opened anew
        cell = _table_column(self.file, (stat.st_size, stat.st_mtime_ns), self.group, self.column)[self.row].as_py()
        item = cell[self.k] if isinstance(cell, list) else cell  # {"bytes", "path"} (HF datasets' Image) or bytes
        return item["bytes"] if isinstance(item, dict) else item

    def identity(self) -> str:
        """Stable while the file is unchanged: its path, size and time of change, and the image's place."""
        stat = os.stat(self.file)
        return f"{self.file}|{stat.st_size}|{stat.st_mtime_ns}|{self.group}|{self.row}|{self.k}"


def stored_path(cell) -> str | None:
    """The file name stored beside an image's bytes: in HF datasets' {"bytes", "path"} layout, or kept by its
    placeholder; None elsewhere."""
    if isinstance(cell, TableImage):
        return cell.path
    return cell.get("path") if isinstance(cell, dict) else None


def is_table(path: Path | str) -> bool:
    """A parquet / arrow file, a folder of them, or a pattern naming some (HF datasets' layouts): rows whose images
    are inside."""
    if str(path) == "-":
        return False
    path = hub.data_path(path)
    return path.is_dir() or hub.is_pattern(path) or path.suffix.lower() in (".parquet", ".arrow")


def table_files(path: Path) -> list[Path]:
    """The parquet / arrow files of a table: the file, those in the folder (at any depth), or those the pattern
    matches (data/validation-*.parquet, */validation-*.parquet), in the order of their paths."""
    if hub.is_pattern(path):
        folder, rest = hub.split_pattern(path)
        return sorted(f for f in folder.glob(rest) if f.suffix.lower() in (".parquet", ".arrow"))
    if path.is_dir():
        return sorted(path.glob("**/*.parquet")) + sorted(path.glob("**/*.arrow"))
    return [path]


def iter_table(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a parquet / arrow table (see table_files), 256 at a time whatever the size of the row groups. The
    image column's cells come as TableImage placeholders (a path-only image as its path), so that the bytes stay
    in the file until a sample is drawn; from parquet they are not even read here (only the names stored beside
    them) where the file's statistics show that every image holds bytes."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet/arrow needs pyarrow: pip install pyarrow") from None
    n = 0
    for file in table_files(path):
        if file.suffix == ".parquet":
            pf = pq.ParquetFile(file)
            columns = _image_columns(pf.schema_arrow)
            batches = _parquet_batches(pf, columns)
        else:
            columns, batches = None, enumerate(_arrow_batches(pa, file))
        start: dict[int, int] = {}  # row group -> rows of it read so far
        for g, batch in batches:
            i0, start[g] = start.get(g, 0), start.get(g, 0) + batch.num_rows
            columns = columns if columns is not None else _image_columns(batch.schema)
            rows = batch.drop_columns(columns).to_pylist()
            for column in columns:
                for row, cell in zip(rows, _placeholders(batch.column(column), str(file), g, i0, column)):
                    row[column] = cell
            for row in rows:
                n += 1
                yield n, row


def _image_columns(schema) -> list[str]:
    """The columns of image bytes (HF datasets' Image feature, or plain binary): 'image' or 'images', else
    MMMU's 'image_1' .. 'image_7'; a column of file names stays as it is."""
    names = ["image"] if _holds_bytes(schema, "image") else ["images"] if _holds_bytes(schema, "images") else []
    return names or [name for name in schema.names if re.fullmatch(r"image_\d+", name) and _holds_bytes(schema, name)]


def _holds_bytes(schema, name: str) -> bool:
    return name in schema.names and _bytes_type(schema.field(name).type)


def _bytes_type(t) -> bool:
    """Binary, a struct with binary "bytes" (HF datasets' Image), or a list of those."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _bytes_type(t.value_type)
    if pa.types.is_struct(t):
        return t.get_field_index("bytes") >= 0 and _bytes_type(t.field("bytes").type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _parquet_batches(pf, columns: list[str]):
    """(row group, record batch) of a parquet file; one image column read as the names beside the bytes only, in
    the row groups where the bytes' null count is just that of the missing images (no image is a path alone).
    Several image columns (MMMU's) are read whole."""
    for g in range(pf.num_row_groups):
        read = _without_bytes(pf, g, columns[0]) if len(columns) == 1 else None
        yield from ((g, batch) for batch in pf.iter_batches(batch_size=256, row_groups=[g], columns=read))


def _without_bytes(pf, g: int, column: str) -> list[str] | None:
    """The columns to read for row group g with the image bytes left out, or None (read them all)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    leaves = {c.path_in_schema: c for c in (pf.metadata.row_group(g).column(j)
                                             for j in range(pf.metadata.num_columns))}
    image_bytes = next((p for p in leaves if p.startswith(column + ".") and p.endswith(".bytes")), None)
    image_path = next((p for p in leaves if p.startswith(column + ".") and p.endswith(".path")), None)
    stats = leaves[image_bytes].statistics if image_bytes else None
    if image_path is None or stats is None or not stats.has_null_count:
        return None
    names = pf.read_row_group(g, columns=[image_path]).column(0).combine_chunks()
    if pa.types.is_struct(names.type):
        missing = names.null_count  # rows without an image
    else:  # a list: absent and empty lists, and absent images inside them
        lengths = pc.list_value_length(names)
        missing = names.null_count + (pc.sum(pc.equal(lengths, 0)).as_py() or 0) + names.flatten().null_count
    if stats.null_count != missing:
        return None  # some image is a file name without bytes: read the bytes' column to tell which
    return [name for name in pf.schema_arrow.names if name != column] + [image_path]


def _placeholders(cells, file: str, g: int, i0: int, column: str) -> list:
    """Per row of the batch's image column: None (no image), a TableImage, a path (an image without bytes), or a
    list of those for a list column."""
    import pyarrow as pa

    def one(item, i: int, k: int):
        if not item.is_valid:
            return None
        if isinstance(item, pa.StructScalar):
            fields = {name: item[name] for name in item.keys()}
            name = fields["path"].as_py() if "path" in fields else None
            if "bytes" in fields and not fields["bytes"].is_valid:
                return name  # an image kept as a file name only
            return TableImage(file, g, i, column, k, name)
        return TableImage(file, g, i, column, k)

    out = []
    for r, cell in enumerate(cells):
        if pa.types.is_list(cells.type) or pa.types.is_large_list(cells.type):
            out.append(None if not cell.is_valid else [one(item, i0 + r, k) for k, item in enumerate(cell.values)])
        else:
            out.append(one(cell, i0 + r, 0))
    return out


@functools.lru_cache(maxsize=2)
def _table_column(file: str, stamp: tuple[int, int], group: int, column: str):
    """One row group's (record batch's) image column, as Arrow data; the last two are kept, for the rows of a
    group drawn close together (in order, as evaluation does)."""
    import pyarrow as pa

    if file.endswith(".parquet"):
        return _parquet_file(file, stamp, os.getpid()).read_row_group(group, columns=[column]).column(0)
    batch = next(itertools.islice(_arrow_batches(pa, Path(file)), group, None))  # memory-mapped: no copy
    return batch.column(column)


@functools.lru_cache(maxsize=8)
def _parquet_file(file: str, stamp: tuple[int, int], pid: int):
    """One open parquet file per process (and version of the file): opening parses its footer, whose size grows
    with the row groups (0.8 MB for 1,200 groups of one row, 14 ms to open), where a sample reads one group."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(file)


def _arrow_batches(pa, file: Path):
    with pa.memory_map(str(file)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
            return
        yield from reader
