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
  MMBench, SEED-Bench, ...): {"question", "image" (or GQA's "imageId", an id in a table of images),
  "answer" | "multiple_choice_answer" | "answers" (optional),
  "hint" and options "A".."D" or "choice_a".."choice_d" (optional)}; asked as LLaVA's model_vqa_mmbench asks
  (hint, question, "A. ..." lines); ScienceQA's "choices" (AI2D's "options") list with an answer index, asked
  as lmms-eval asks;
  MMMU's "options" list, "question_type" and images "image_1".."image_7", asked as lmms-eval's mmmu task asks;
- files: .json (a list, streamed object by object), .jsonl, .tsv (MMBench's tables, images as base64), and HF
  datasets on disk (.parquet / .arrow, or a `save_to_disk` folder) whose image column holds bytes; any of these in
  a hub dataset, hf://datasets/ORG/NAME/PATH.
"""

from __future__ import annotations

import ast
import base64
import collections
import csv
import dataclasses
import json
import math
import re
import string
import sys
from pathlib import Path
from typing import Any, Iterator

from llavatune import hub
from llavatune.data.tables import TableImage, is_table, iter_table, table_files
from llavatune.errors import DataError

IMAGE_TAG = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "bot": "assistant", "model": "assistant"}


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


@dataclasses.dataclass
class BadLine:
    """A line of a JSON-lines file that is not JSON, in place of its row: `data validate` lists every such line
    and reads on, where everything else stops at the first."""
    message: str


def iter_rows(path: Path, keep_bad_lines: bool = False) -> Iterator[tuple[int, dict | BadLine]]:
    """(row number from 1, row dict) for .json / .jsonl / .tsv / .parquet / .arrow files, dataset folders and
    patterns, such files, folders and patterns in a hub dataset (hf://datasets/ORG/NAME/PATH), and JSON lines on
    standard input when the path is '-'. A table's image cells are TableImage placeholders (see tables.iter_table).
    A JSON line that cannot be parsed raises DataError naming `file:line`, or comes as a BadLine (keep_bad_lines)."""
    for n, row in _rows(path):
        if isinstance(row, BadLine) and not keep_bad_lines:
            raise DataError(row.message)
        yield n, row


def _rows(path: Path) -> Iterator[tuple[int, dict | BadLine]]:
    if str(path) == "-":
        yield from _iter_lines(sys.stdin, "<stdin>")
        return
    if shards := hub.data_shards(path):  # a hub split: each shard comes down when the rows reach it
        yield from _iter_shards(shards)
        return
    path = hub.data_path(path)
    if not exists(path):
        raise DataError(f"{path}: " + ("no file matches." if hub.is_pattern(path) else "file not found."))
    if is_table(path):
        yield from iter_table(path)
    elif path.suffix.lower() == ".jsonl":
        yield from _iter_jsonl(path)
    elif path.suffix.lower() == ".tsv":
        yield from _iter_tsv(path)
    else:
        yield from _iter_json_array(path)


def _iter_shards(shards: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """The rows of hub tables one after the other, numbered on from one to the next as those of a local pattern."""
    before = 0
    for shard in shards:
        n = 0
        for n, row in iter_table(hub.data_path(shard)):
            yield before + n, row
        before += n


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
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = BadLine(f"{name}:{n}: not valid JSON ({err.msg} at column {err.colno}).")
        yield n, row


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
    """Stream the objects of a top-level JSON list without holding the whole file (bounded memory), as strict as
    json.load: a missing, doubled or trailing comma is an error that names the row and its line."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as f:
        buf, pos = f.read(chunk_size), 0
        pos = _skip_ws(buf, pos)
        if buf[pos:pos + 1] != "[":
            if buf[pos:pos + 1] == "{":  # a file of JSON lines saved as .json
                yield from _iter_jsonl(path)
                return
            raise DataError(f"{path}: expected a JSON list of samples ('[' first), found {buf[pos:pos + 20]!r}.")
        pos, n, lines, last = pos + 1, 0, 1, "["  # rows read, the file's line at buf[0], "[" / "," / "row"

        def where(at: int) -> str:  # the row being read, and the file's line of buf[at]
            line = lines + buf.count("\n", 0, at)
            return f"{path}: row {n + 1} (line {line})"

        while True:
            pos = _skip_ws(buf, pos)
            if pos >= len(buf):
                more = f.read(chunk_size)
                if not more:
                    raise DataError(f"{path}: the JSON list is not closed (no ']' after row {n}).")
                lines += buf.count("\n")
                buf, pos = more, 0
                continue
            char = buf[pos]
            if char == "]" and last != ",":
                _nothing_after(f, buf[pos + 1:], lines + buf.count("\n", 0, pos + 1), path, chunk_size)
                return
            if char in ",]" and last != "row":
                raise DataError(f"{where(pos)}: " + ("a comma with no row before it." if char == "," else
                                                     "a comma after the last row, which JSON does not allow."))
            if char == ",":
                pos, last = pos + 1, ","
                continue
            if last == "row":
                raise DataError(f"{where(pos)}: no comma between row {n} and this one.")
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                # A row cut by the chunk's end fails at that end, or in a string not closed yet: read on. Any other
                # failure is in the row itself (reading on there would hold the whole file, copying it per chunk).
                cut = err.pos >= len(buf) - 32 or err.msg.startswith("Unterminated string")
                more = f.read(chunk_size) if cut else ""
                if not more:
                    raise DataError(f"{where(err.pos)}: not valid JSON ({err.msg}).") from None
                lines += buf.count("\n", 0, pos)
                buf, pos = buf[pos:] + more, 0
                continue
            n, pos, last = n + 1, end, "row"
            yield n, obj
            if pos > chunk_size:
                lines += buf.count("\n", 0, pos)
                buf, pos = buf[pos:], 0


def _nothing_after(f, rest: str, line: int, path: Path, chunk_size: int) -> None:
    """Only white space may follow a JSON list's closing ']' up to the end of the file `f`: `rest` is what the
    buffer holds after it, from the file's line `line`."""
    while not rest.strip():
        line += rest.count("\n")
        rest = f.read(chunk_size)
        if not rest:
            return
    line += rest[:len(rest) - len(rest.lstrip())].count("\n")
    raise DataError(f"{path}: line {line}: text after the list's closing ']' (two lists in one file?).")


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in " \t\r\n":
        pos += 1
    return pos


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
        question, answer = _question_row(row, where)
        # an image tag per image, on one line before the question (as lmms-eval's llava model asks)
        turns = [("user", " ".join([IMAGE_TAG] * len(images)) + "\n" + question if images else question)]
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


def _question_row(row: dict, where: str) -> tuple[str, str | None]:
    """(the question, the reference answer or None when the row has none). Options come as MMBench's columns "A".."D"
    or SEED-Bench's "choice_a".."choice_d" (up to the first missing one), built as LLaVA's model_vqa_mmbench builds
    them: the hint, the question, then "A. ..." lines; or as ScienceQA's "choices" (AI2D's "options") list with the
    index of the right one as "answer" (AI2D's as text), built as lmms-eval's scienceqa and ai2d tasks build them:
    "Context: " + the hint (when there is one), the question, the "A. ..." lines, and the reference is the letter.
    The answer is otherwise "answer", VQAv2's "multiple_choice_answer", or the most common of "answers" (or of
    "answer" as a list, OCRBench's). MMMU's rows: see _mmmu_question."""
    if "question_type" in row and "options" in row:
        return _mmmu_question(row, where)
    listed = row.get("choices", row.get("options"))  # ScienceQA's "choices", AI2D's "options"
    if isinstance(listed, list):
        options = [str(c) for c in listed]
        hint = "" if missing(row.get("hint")) else f"Context: {row['hint']}\n"
        letters = string.ascii_uppercase
        question = hint + row["question"] + "".join(f"\n{letter}. {c}" for letter, c in zip(letters, options))
        answer = row.get("answer")
        if isinstance(answer, str) and answer.isdigit():  # AI2D keeps the index as text
            answer = int(answer)
        if isinstance(answer, int) and 0 <= answer < len(options):
            return question, letters[answer]
        return question, None if missing(answer) else str(answer)
    question = row["question"]
    if not missing(row.get("hint")):
        question = f"{row['hint']}\n{question}"
    for letter in "ABCD":
        option = row.get(letter, row.get(f"choice_{letter.lower()}"))  # MMBench's columns, or SEED-Bench's
        if missing(option):
            break
        question += f"\n{letter}. {option}"
    for key in ("answer", "multiple_choice_answer"):
        if isinstance(row.get(key), (str, int, float)) and not missing(row[key]):
            return question, str(row[key])
    listed = row["answer"] if isinstance(row.get("answer"), list) else row.get("answers")  # OCRBench: "answer"
    answers = [a.get("answer") if isinstance(a, dict) else a for a in listed or []]
    answers = [str(a) for a in answers if a is not None]
    return question, collections.Counter(answers).most_common(1)[0][0] if answers else None


def _mmmu_question(row: dict, where: str) -> tuple[str, str | None]:
    """MMMU's question as lmms-eval's mmmu_val builds it: the question, then for a multiple-choice one the options
    as "A. ..." lines; its instruction after a blank line (the letter, or a word or phrase for an open question:
    one set holds both kinds, so no single --prompt-suffix serves). Its "<image 1>" mentions stay in the text."""
    question = row["question"]
    if row["question_type"] == "multiple-choice":
        options = mmmu_options(row, where)
        question += "\n" + "\n".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options))
        question += "\n" + SUFFIXES["letter"]
    else:
        question += "\n" + SUFFIXES["short"]
    return question, None if missing(row.get("answer")) else str(row["answer"])


def mmmu_options(row: dict, where: str) -> list[str]:
    """MMMU keeps its options as the text of a Python list ("['1', '2']") on the hub."""
    options = row["options"]
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except (ValueError, SyntaxError):
            options = None
    if not isinstance(options, list):
        raise DataError(f"{where}: 'options' must be a list of the options (or its text, \"['a', 'b']\"); found "
                        f"{row['options']!r:.60}.")
    return [str(o) for o in options]


def missing(value) -> bool:
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
    if value is None and isinstance(row.get("imageId"), str):  # GQA's questions: the image's id, in a table of
        value = row["imageId"]                                  # images given as the image folder (images.py)
    if value is None and any(re.fullmatch(r"image_\d+", key) for key in row):
        value = _numbered_images(row, where)
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


def _numbered_images(row: dict, where: str) -> list | None:
    """MMMU's "image_1" .. "image_7": those its question and options name ("<image 2>"), in the order of their
    numbers, as lmms-eval's mmmu task passes them; all that are there when the text names none."""
    named = sorted({int(n) for n in re.findall(r"<image (\d+)>", f"{row.get('question')}{row.get('options', '')}")})
    numbers = named or sorted(int(key[6:]) for key in row if re.fullmatch(r"image_\d+", key)
                              and row[key] is not None)
    for n in numbers:
        if row.get(f"image_{n}") is None:
            raise DataError(f"{where}: the question names <image {n}>, but 'image_{n}' holds no image.")
    return [row[f"image_{n}"] for n in numbers] or None


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


# The instructions LLaVA-1.5 adds to short-answer and multiple-choice questions (its data and question files hold
# them; the hub's sets do not), and lmms-eval's for ChartQA.
SUFFIXES = {
    "short": "\nAnswer the question using a single word or phrase.",
    "word": "\nAnswer the question with a single word.",  # ChartQA's, as lmms-eval asks it
    "letter": "\nAnswer with the option's letter from the given choices directly.",
    "letter-cn": "\n请直接回答选项字母。",
    "unanswerable": "\nWhen the provided information is insufficient, respond with 'Unanswerable'.\nAnswer the "
                    "question using a single word or phrase.",  # LLaVA-1.5's VizWiz questions
}


def with_suffix(record: Record, suffix: str) -> Record:
    """The record with `suffix` (a name in SUFFIXES, or text where '\\n' is a line break) at the end of every user
    turn, as LLaVA-1.5's data asks each question; a turn that ends with it already is left as it is."""
    text = SUFFIXES.get(suffix, suffix.replace("\\n", "\n"))
    if not text:
        return record
    turns = [(role, said if role != "user" or said.endswith(text) else said + text) for role, said in record.turns]
    return dataclasses.replace(record, turns=turns)


def with_ocr_tokens(record: Record) -> Record:
    """A TextVQA row (its "ocr_tokens" list) asked with its OCR tokens, as LLaVA-1.5's TextVQA question file and
    lmms-eval's textvqa `ocr` option ask it: "\\nReference OCR token: a, b, c" after the question (LLaVA-1.5-7B's
    TextVQA 58.2 is with this line)."""
    tokens = (record.raw or {}).get("ocr_tokens")
    turns = list(record.turns)
    questions = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not isinstance(tokens, list) or not questions:
        return record
    last = questions[-1]  # the question (before any answer)
    turns[last] = ("user", turns[last][1] + "\nReference OCR token: " + ", ".join(map(str, tokens)))
    return dataclasses.replace(record, turns=turns)


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
                        "unpack them into a folder with `llavatune data convert DATA --images DIR --out "
                        "FILE.json`, or write a .parquet file, which holds them.")
    if len(record.images) == 1:
        row["image"] = record.images[0]
    elif record.images:
        row["image"] = list(record.images)
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    row["conversations"] = [{"from": names[r], "value": t} for r, t in record.turns]
    return {**row, **extra_fields(record)}
