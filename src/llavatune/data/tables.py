"""Parquet / arrow tables, the layouts of HF datasets: their files (a file, a folder of shards, or a pattern naming
some), their rows with each image as a TableImage placeholder, and the image read when a sample is drawn. The bytes
stay in the file: a dataset of many GB is neither held in memory nor read through when its rows are read."""

from __future__ import annotations

import bisect
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
            columns, batches = None, _arrow_places(pa, file)
        for places, batch in batches:
            columns = columns if columns is not None else _image_columns(batch.schema)
            rows = batch.drop_columns(columns).to_pylist()
            for column in columns:
                for row, cell in zip(rows, _placeholders(batch.column(column), str(file), places, column)):
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
    """(each row's place: (row group, row in it), record batch) of a parquet file, a pass over each run of row groups
    read alike (a pass per group cost 1 ms a group: 27 s for 665K photos in groups of 4 MB). One image column is
    read as the names beside the bytes only, in the groups where the statistics show that no image is a path
    alone; several image columns (MMMU's) are read whole."""
    starts = list(itertools.accumulate((pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)),
                                       initial=0))  # the first row of each group (an empty one starts where the next)
    without = _without_bytes(pf, columns[0], starts) if len(columns) == 1 else None
    read, names_only = without or (None, [False] * pf.num_row_groups)
    for lazy, run in itertools.groupby(range(pf.num_row_groups), key=names_only.__getitem__):
        run = list(run)
        first = starts[run[0]]
        for batch in pf.iter_batches(batch_size=256, row_groups=run, columns=read if lazy else None):
            places = []  # a batch may span groups
            for i in range(first, first + batch.num_rows):
                g = bisect.bisect_right(starts, i) - 1
                places.append((g, i - starts[g]))
            first += batch.num_rows
            yield places, batch


def _arrow_places(pa, file: Path):
    """As _parquet_batches, for an arrow file: its record batches are the groups."""
    for g, batch in enumerate(_arrow_batches(pa, file)):
        yield [(g, i) for i in range(batch.num_rows)], batch


def _without_bytes(pf, column: str, starts: list[int]) -> tuple[list[str], list[bool]] | None:
    """(the columns to read with the image bytes left out, per row group whether that may be done), or None (read
    them all). It may where the group's statistics count as many null bytes as images missing: an image kept as a
    file name alone (its bytes null) makes them more, and is told from the bytes' column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    leaves = [pf.metadata.schema.column(j).path for j in range(pf.metadata.num_columns)]
    image_bytes = next((j for j, p in enumerate(leaves) if p.startswith(column + ".") and p.endswith(".bytes")), None)
    image_path = next((p for p in leaves if p.startswith(column + ".") and p.endswith(".path")), None)
    if image_bytes is None or image_path is None:
        return None
    stats = [pf.metadata.row_group(g).column(image_bytes).statistics for g in range(pf.num_row_groups)]
    if any(s is None or not s.has_null_count for s in stats):
        return None
    names = pf.read(columns=[image_path]).column(0).combine_chunks()  # the names only: kilobytes
    missing = pc.is_null(names).to_numpy(zero_copy_only=False).astype(np.int64)  # rows without an image
    if not pa.types.is_struct(names.type):  # a list: also empty lists, and absent images inside them
        missing += pc.equal(pc.list_value_length(names), 0).fill_null(False).to_numpy(zero_copy_only=False)
        inner = pc.is_null(pc.list_flatten(names)).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(names).to_numpy(zero_copy_only=False)
        missing += np.bincount(parents[inner], minlength=len(names))
    total = np.concatenate([[0], np.cumsum(missing)])
    per_group = total[starts[1:]] - total[starts[:-1]]
    lazy = [s.null_count == int(m) for s, m in zip(stats, per_group)]
    return [name for name in pf.schema_arrow.names if name != column] + [image_path], lazy


def _placeholders(cells, file: str, places: list[tuple[int, int]], column: str) -> list:
    """Per row of the batch's image column (at `places`: row group, row): None (no image), a TableImage, a path (an
    image without bytes), or a list of those for a list column."""
    import pyarrow as pa

    def one(item, g: int, i: int, k: int):
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
    for (g, i), cell in zip(places, cells):
        if pa.types.is_list(cells.type) or pa.types.is_large_list(cells.type):
            out.append(None if not cell.is_valid else [one(item, g, i, k) for k, item in enumerate(cell.values)])
        else:
            out.append(one(cell, g, i, 0))
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
