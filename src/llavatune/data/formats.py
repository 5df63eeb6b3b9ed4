"""Read conversation datasets into `Record`s, one at a time.

Formats (detected per row, so mixed files work):
- LLaVA: {"id", "image": "a.jpg" | ["a.jpg", ...] (optional), "conversations": [{"from"|"role": ..., "value"|"content": ...}]}
  with roles human/gpt/user/assistant/system;
- ShareGPT: the same with "conversations" of {"from", "value"} and optional "images";
- OpenAI messages: {"messages": [{"role", "content": str | [{"type": "text"|"image_url", ...}]}]}, images as
  data URIs or file paths; `<image>` tags are inserted where the image parts were;
- LLaVA benchmark questions (llava/eval's question files): {"question_id", "image" (optional), "text"}, one
  question, no answer; the question is asked as LLaVA's model_vqa_loader asks it, "<image>\n" + text;
- question/answer rows, the layout of the evaluation sets on the hub (lmms-lab's MME, POPE, VQAv2, TextVQA,
  MMBench, SEED-Bench, ...): {"question", "image", "answer" | "multiple_choice_answer" | "answers" (optional),
  "hint" and options "A".."D" or "choice_a".."choice_d" (optional)}; asked as LLaVA's model_vqa_mmbench asks
  (hint, question, "A. ..." lines);
- files: .json (a list, streamed object by object), .jsonl, .tsv (MMBench's tables, images as base64), and HF
  datasets on disk (.parquet / .arrow, or a `save_to_disk` folder) whose image column holds bytes; any of these in
  a hub dataset, hf://datasets/ORG/NAME/PATH.
"""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from llavatune import hub
from llavatune.errors import LlavatuneError

IMAGE_TAG = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "bot": "assistant", "model": "assistant"}


class DataError(LlavatuneError):
    """Bad input data; the message names the file and row."""


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
        cell = _table_column(self.file, self.group, self.column)[self.row].as_py()
        return _images_field({self.column: cell}, f"{self.file}: row group {self.group}, row {self.row}")[self.k]

    def identity(self) -> str:
        """Stable while the file is unchanged: its path, size and time of change, and the image's place."""
        stat = os.stat(self.file)
        return f"{self.file}|{stat.st_size}|{stat.st_mtime_ns}|{self.group}|{self.row}|{self.k}"


@dataclasses.dataclass
class Record:
    """One sample: turns are (role, text) with role in user/assistant/system; `images` are paths relative to the
    image folder, `bytes` of embedded images (data URIs), or images in the parquet / arrow file read."""
    id: str
    turns: list[tuple[str, str]]
    images: list[str | bytes | TableImage] = dataclasses.field(default_factory=list)
    source: str = ""   # file:row, for error messages
    raw: dict | None = None  # the original row (a table's images as TableImage), for tools that rewrite files


def read_records(path: Path | str, strict: bool = True) -> Iterator[Record]:
    """Yield records from a file; a malformed row raises DataError naming `file:row` (strict) or is skipped.
    Images of a parquet / arrow file stay there (TableImage), to be read when opened."""
    name = hub.data_name(path)
    for row_number, row in iter_rows(Path(path)):
        try:
            yield to_record(row, f"{name}:{row_number}")
        except DataError:
            if strict:
                raise


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row dict) for .json / .jsonl / .tsv / .parquet / .arrow files, dataset folders and
    patterns, such files, folders and patterns in a hub dataset (hf://datasets/ORG/NAME/PATH), and JSON lines on
    standard input when the path is '-'. A table's image cells are TableImage placeholders (see _iter_table)."""
    if str(path) == "-":
        yield from _iter_lines(sys.stdin, "<stdin>")
        return
    path = hub.data_path(path)
    if not exists(path):
        raise DataError(f"{path}: " + ("no file matches." if hub.is_pattern(path) else "file not found."))
    if is_table(path):
        yield from _iter_table(path)
    elif path.suffix.lower() == ".jsonl":
        yield from _iter_jsonl(path)
    elif path.suffix.lower() == ".tsv":
        yield from _iter_tsv(path)
    else:
        yield from _iter_json_array(path)


def stored_path(cell) -> str | None:
    """The file name beside an image's bytes in HF datasets' {"bytes", "path"} layout; None elsewhere."""
    return cell.get("path") if isinstance(cell, dict) else None


def is_table(path: Path | str) -> bool:
    """A parquet / arrow file, a folder of them, or a pattern naming some (HF datasets' layouts): rows whose images
    are inside."""
    if str(path) == "-":
        return False
    path = hub.data_path(path)
    return path.is_dir() or hub.is_pattern(path) or path.suffix.lower() in (".parquet", ".arrow")


def table_files(path: Path) -> list[Path]:
    """The parquet / arrow files of a table: the file, those in the folder (at any depth), or those the pattern's
    last part matches (data/validation-*.parquet)."""
    if hub.is_pattern(path):
        return sorted(f for f in path.parent.glob(path.name) if f.suffix.lower() in (".parquet", ".arrow"))
    if path.is_dir():
        return sorted(path.glob("**/*.parquet")) + sorted(path.glob("**/*.arrow"))
    return [path]


def exists(path: Path | str) -> bool:
    """The data is there: a file, a folder, or a pattern that matches a parquet / arrow file (hub data is
    downloaded here)."""
    path = hub.data_path(path)
    return bool(table_files(path)) if hub.is_pattern(path) else path.exists()


def beside(path: Path, suffix: str) -> Path:
    """A file named after the data (errors, plots), written beside it; for hub data in the working folder: the hub
    cache is not ours to write."""
    name = re.sub(r"[*?\[\]]", "_", Path(path).name) + suffix  # a pattern's file: no glob characters in its name
    return Path(name) if hub.is_hub_data(path) else Path(path).parent / name


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig") as f:
        yield from _iter_lines(f, str(path))


def _iter_lines(lines, name: str) -> Iterator[tuple[int, dict]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}:{n}: not valid JSON ({err.msg} at column {err.colno}).") from None


def _iter_tsv(path: Path) -> Iterator[tuple[int, dict]]:
    """MMBench's tables (mmbench_dev_20230712.tsv, as LLaVA's eval reads them): a header line, then a row per
    question with its image as base64 text in "image". The image is decoded; "index" and "question_id" are kept as
    numbers, as pandas reads them (LLaVA's convert_mmbench_for_submission.py matches answers by the number)."""
    csv.field_size_limit(1 << 30)  # an image is one field of several hundred KB
    with path.open(encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 1):
            for key in ("index", "question_id"):
                if str(row.get(key, "")).isdigit():
                    row[key] = int(row[key])
            if not row.get("image"):  # an empty cell: a question without an image
                row.pop("image", None)
            else:
                try:
                    row["image"] = base64.b64decode(row["image"], validate=True)
                except ValueError:
                    raise DataError(f"{path}:{n}: 'image' is not base64 text (an MMBench table holds the image "
                                    "itself there).") from None
            yield n, row


def _iter_json_array(path: Path, chunk_size: int = 1 << 20) -> Iterator[tuple[int, dict]]:
    """Stream the objects of a top-level JSON list without holding the whole file (bounded memory)."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as f:
        buf, pos, n = f.read(chunk_size), 0, 0
        pos = _skip_ws(buf, pos)
        if buf[pos:pos + 1] != "[":
            if buf[pos:pos + 1] == "{":  # a file of JSON lines saved as .json
                yield from _iter_jsonl(path)
                return
            raise DataError(f"{path}: expected a JSON list of samples ('[' first), found {buf[pos:pos + 20]!r}.")
        pos += 1
        while True:
            pos = _skip_ws(buf, pos)
            if pos >= len(buf):
                more = f.read(chunk_size)
                if not more:
                    raise DataError(f"{path}: the JSON list is not closed (no ']' after row {n}).")
                buf, pos = buf[pos:] + more, 0
                continue
            if buf[pos] == "]":
                return
            if buf[pos] == ",":
                pos += 1
                continue
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:  # a row cut by the chunk boundary, or a bad row
                more = f.read(chunk_size)
                if not more:
                    raise DataError(f"{path}: row {n + 1}: not valid JSON ({err.msg}).") from None
                buf, pos = buf[pos:] + more, 0
                continue
            n += 1
            yield n, obj
            pos = end
            if pos > chunk_size:
                buf, pos = buf[pos:], 0


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


def _iter_table(path: Path) -> Iterator[tuple[int, dict]]:
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
            column = _image_column(pf.schema_arrow)
            batches = _parquet_batches(pf, column)
        else:
            column, batches = None, enumerate(_arrow_batches(pa, file))
        start: dict[int, int] = {}  # row group -> rows of it read so far
        for g, batch in batches:
            i0, start[g] = start.get(g, 0), start.get(g, 0) + batch.num_rows
            column = column or _image_column(batch.schema)
            rows = batch.drop_columns([column]).to_pylist() if column else batch.to_pylist()
            if column:
                for row, cell in zip(rows, _placeholders(batch.column(column), str(file), g, i0, column)):
                    row[column] = cell
            for row in rows:
                n += 1
                yield n, row


def _image_column(schema) -> str | None:
    """'image' or 'images' where it holds image bytes (HF datasets' Image feature, or plain binary), else None:
    a column of file names stays as it is."""
    import pyarrow as pa

    def holds_bytes(t) -> bool:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return holds_bytes(t.value_type)
        if pa.types.is_struct(t):
            return t.get_field_index("bytes") >= 0 and holds_bytes(t.field("bytes").type)
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    return next((name for name in ("image", "images") if name in schema.names
                 and holds_bytes(schema.field(name).type)), None)


def _parquet_batches(pf, column: str | None):
    """(row group, record batch) of a parquet file; the image column read as the names beside the bytes only, in
    the row groups where the bytes' null count is just that of the missing images (no image is a path alone)."""
    for g in range(pf.num_row_groups):
        columns = _without_bytes(pf, g, column) if column else None
        yield from ((g, batch) for batch in pf.iter_batches(batch_size=256, row_groups=[g], columns=columns))


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
def _table_column(file: str, group: int, column: str):
    """One row group's (record batch's) image column, as Arrow data; the last two are kept, for the rows of a
    group drawn close together (in order, as evaluation does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.endswith(".parquet"):
        return pq.ParquetFile(file).read_row_group(group, columns=[column]).column(0)
    batch = next(itertools.islice(_arrow_batches(pa, Path(file)), group, None))  # memory-mapped: no copy
    return batch.column(column)


def _arrow_batches(pa, file: Path):
    with pa.memory_map(str(file)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
            return
        yield from reader


def to_record(row: Any, where: str) -> Record:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a sample must be a JSON object, found {type(row).__name__}.")
    if "messages" in row:
        turns, images = _openai_turns(row["messages"], where)
    elif "conversations" in row:
        turns = llava_turns(row["conversations"], where)
        images = _images_field(row, where)
    elif "question_id" in row and "text" in row:
        images = _images_field(row, where)
        if not isinstance(row["text"], str):
            raise DataError(f"{where}: 'text' must be the question, a string.")
        turns = [("user", IMAGE_TAG + "\n" + row["text"] if images else row["text"])]
    elif isinstance(row.get("question"), str):
        images = _images_field(row, where)
        question, answer = _question_row(row)
        turns = [("user", IMAGE_TAG + "\n" + question if images else question)]
        turns += [("assistant", answer)] if answer is not None else []
    else:
        raise DataError(f"{where}: no 'conversations' (LLaVA/ShareGPT), 'messages' (OpenAI), 'question_id' + 'text' "
                        f"(LLaVA benchmark questions) or 'question' (question/answer rows) keys; found keys "
                        f"{', '.join(map(str, row)) or 'none'}.")
    if not images:
        _no_other_image_column(row, where)
    ident = row.get("id", row.get("question_id", row.get("index", where.rsplit(":", 1)[-1])))  # index: MMBench's
    return Record(id=str(ident), turns=turns, images=images, source=where, raw=row)


def _no_other_image_column(row: dict, where: str) -> None:
    """A dataset whose image column has another name ("img", "image_1") would otherwise be read as text only."""
    def is_image(cell) -> bool:
        return isinstance(cell, dict) and isinstance(cell.get("bytes"), (bytes, bytearray))

    for key, value in row.items():
        if key not in ("image", "images") and (is_image(value) or (isinstance(value, list) and value
                                                                  and all(map(is_image, value)))):
            raise DataError(f"{where}: column '{key}' holds images, which are read from 'image' (or 'images'); rename "
                            f"it (in datasets: ds.rename_column('{key}', 'image')).")


def _question_row(row: dict) -> tuple[str, str | None]:
    """(the question as LLaVA's model_vqa_mmbench builds it: hint, question, then "A. ..." for options A to D
    ("A".."D" or "choice_a".."choice_d") up to the first missing one; the reference answer: "answer", VQAv2's "multiple_choice_answer", or the most common of
    "answers"; None when the row has none)."""
    question = row["question"]
    if not _missing(row.get("hint")):
        question = f"{row['hint']}\n{question}"
    for letter in "ABCD":
        option = row.get(letter, row.get(f"choice_{letter.lower()}"))  # MMBench's columns, or SEED-Bench's
        if _missing(option):
            break
        question += f"\n{letter}. {option}"
    for key in ("answer", "multiple_choice_answer"):
        if isinstance(row.get(key), (str, int, float)) and not _missing(row[key]):
            return question, str(row[key])
    answers = [a.get("answer") if isinstance(a, dict) else a for a in row.get("answers") or []]
    answers = [str(a) for a in answers if a is not None]
    return question, collections.Counter(answers).most_common(1)[0][0] if answers else None


def _missing(value) -> bool:
    """None, NaN, or the strings 'nan' / 'none' (pandas-written tables), as LLaVA's MMBench script reads them, or
    an empty cell of a .tsv table (which pandas reads as NaN)."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none")))


def llava_turns(conversations: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(conversations, list) or not conversations:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of turns.")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {i} must be an object with 'from' and 'value'.")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if role not in ROLES:
            raise DataError(f"{where}: turn {i} has unknown role {role!r}; use one of "
                            f"{', '.join(sorted(ROLES))}.")
        if not isinstance(text, str):
            raise DataError(f"{where}: turn {i} has no text ('value' must be a string).")
        turns.append((ROLES[role], text))
    return turns


def _images_field(row: dict, where: str) -> list[str | bytes]:
    value = row.get("image", row.get("images"))
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str | bytes] = []
    for item in items:
        if isinstance(item, TableImage):  # an image of a parquet / arrow file, read when opened
            out.append(item)
            continue
        if isinstance(item, dict):  # HF datasets Image feature: {"bytes": ..., "path": ...}
            item = item.get("bytes") or item.get("path")
        if isinstance(item, (bytes, bytearray)):
            out.append(bytes(item))
        elif isinstance(item, str) and item:
            out.append(_decode_data_uri(item, where) if item.startswith("data:") else item)
        else:
            raise DataError(f"{where}: 'image' must be a path, a list of paths or image bytes; got {item!r:.60}.")
    return out


def _openai_turns(messages: Any, where: str) -> tuple[list[tuple[str, str]], list[str | bytes]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list.")
    turns, images = [], []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r}; use system, user or assistant.")
        content = msg.get("content")
        if isinstance(content, str):
            turns.append((ROLES[role], content))
            continue
        if not isinstance(content, list):
            raise DataError(f"{where}: message {i} content must be a string or a list of parts.")
        text = ""
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text += part.get("text", "")
            elif kind in ("image_url", "image"):
                url = part.get("image_url", {}).get("url") if kind == "image_url" else part.get("image")
                images.append(_decode_data_uri(url, where) if str(url).startswith("data:") else url)
                text += IMAGE_TAG + "\n"
            else:
                raise DataError(f"{where}: message {i} has a part of unknown type {kind!r} (text or image_url).")
        turns.append((ROLES[role], text))
    return turns, images


def _decode_data_uri(uri: str, where: str) -> bytes:
    header, _, data = uri.partition(",")
    if ";base64" not in header:
        raise DataError(f"{where}: image data URI must be base64 encoded (data:image/png;base64,...).")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise DataError(f"{where}: image data URI is not valid base64.") from None


def extra_fields(record: Record) -> dict:
    """The row's fields besides its id, images and turns (question_id, answers, category, ...): kept by the tools
    that rewrite rows, which evaluation and LLaVA's scoring scripts need."""
    raw = record.raw or {}
    if "conversations" in raw or "messages" in raw:
        turns = {"conversations", "messages"}
    else:  # the question (and answer) of a LLaVA question file or a question/answer row
        turns = {"text"} if "text" in raw and "question_id" in raw else {"question", "answer"}
    return {k: v for k, v in raw.items() if k not in {"id", "image", "images", *turns}}


def llava_row(record: Record) -> dict:
    """A record as a LLaVA JSON row, its other fields kept (image bytes cannot be written this way and raise)."""
    row: dict[str, Any] = {"id": record.id}
    if any(not isinstance(im, str) for im in record.images):
        raise DataError(f"{record.source}: its images are inside the data (bytes), which LLaVA JSON cannot hold: "
                        "unpack them into a folder with `llavatune data convert DATA --to llava --images DIR --out "
                        "FILE.json`, or write a .parquet file, which holds them.")
    if len(record.images) == 1:
        row["image"] = record.images[0]
    elif record.images:
        row["image"] = list(record.images)
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    row["conversations"] = [{"from": names[r], "value": t} for r, t in record.turns]
    return {**row, **extra_fields(record)}
