"""Row-level data tools: sample, filter, repeat, split, mix, convert, from-folders.

They read any supported format (streamed) and write LLaVA JSON (`.json`), JSON lines (`.jsonl`), JSON lines on
standard output for `-`, so they chain: `data filter mix.json --image-prefix textvqa/ --out - | data sample - --n
1000 --seed 0 --out subset.json`, or parquet (`.parquet`), which holds the images of rows read from parquet /
arrow data. Rows keep their other fields (question_id, answers, ...). Seeded tools give the same rows for the
same input and seed.
"""

from __future__ import annotations

import collections
import json
import random
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

from llavatune.data import images as imagelib
from llavatune.data.formats import DataError, Record, extra_fields, iter_rows, llava_row, read_records, to_record
from llavatune.data.pack import atomic_file, column_types, unpack, write_parquet
from llavatune.data.tables import TableImage, is_table, stored_path
from llavatune.errors import LlavatuneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def write_rows(path: Path | str, rows: Iterable[dict]) -> int:
    """Write rows as a JSON list (.json), JSON lines (.jsonl, or stdout for '-'), or a .parquet file (which keeps
    the images of rows read from parquet / arrow data inside); atomic for files."""
    if str(path).endswith(".parquet"):
        records = (to_record(row, f"row {n}") for n, row in enumerate(rows, 1))
        if isinstance(rows, list):  # held already (mix, sample): columns for every field of every row
            records = list(records)
            return write_parquet(path, records, None, columns=column_types(map(extra_fields, records)))
        return write_parquet(path, records, None)
    if str(path) == "-":
        n = 0
        for n, row in enumerate(rows, 1):
            sys.stdout.write(_json(row, n, path) + "\n")
        sys.stdout.flush()
        return n
    n, lines = 0, Path(path).suffix == ".jsonl"
    with atomic_file(Path(path)) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write("" if lines else "[\n")
        for row in rows:
            f.write(("" if lines or n == 0 else ",\n") + _json(row, n + 1, path) + ("\n" if lines else ""))
            n += 1
        f.write("" if lines else "\n]\n")
    return n


def _json(row: dict, n: int, out: Path | str) -> str:
    def no_bytes(value):
        if isinstance(value, (bytes, bytearray, TableImage)):
            raise DataError(f"--out {out}: row {n} holds image bytes (it comes from a parquet / arrow dataset), which "
                            "JSON cannot hold: write a .parquet file (--out NAME.parquet), or unpack the images into a "
                            "folder first (llavatune data convert DATA --images DIR --out NAME.json).")
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return json.dumps(row, ensure_ascii=False, default=no_bytes)


def rows_of(path: Path | str) -> Iterator[dict]:
    for _, row in iter_rows(Path(path)):
        yield row


def sample(rows: Iterable[dict], n: int, seed: int) -> list[dict]:
    """n rows chosen uniformly (reservoir sampling, one pass, O(n) memory), kept in their input order. Fewer
    rows than n: all of them, said on stderr."""
    if n < 1:
        raise LlavatuneError(f"--n must be at least 1, got {n}.")
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict]] = []
    for i, row in enumerate(rows):
        if i < n:
            reservoir.append((i, row))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                reservoir[j] = (i, row)
    if len(reservoir) < n:
        print(f"note: --n {n:,} asked for, the data has {len(reservoir):,} rows: all of them kept", file=sys.stderr)
    return [row for _, row in sorted(reservoir, key=lambda pair: pair[0])]


def image_list(row: dict) -> list[str]:
    """The row's image file names; for images inside a parquet row, the names stored beside their bytes."""
    value = row.get("image", row.get("images"))
    if value is None:
        return []
    names = (v if isinstance(v, str) else stored_path(v) for v in (value if isinstance(value, list) else [value]))
    return [name for name in names if isinstance(name, str)]


def has_image(row: dict) -> bool:
    if image_list(row) or row.get("image") or row.get("images"):
        return True
    return any(isinstance(m.get("content"), list) and any(p.get("type") in ("image_url", "image")
                                                           for p in m["content"] if isinstance(p, dict))
               for m in row.get("messages") or [] if isinstance(m, dict))


def keep(row: dict, image_prefix: str | None, text_only: bool | None, contains: str | None) -> bool:
    images = image_list(row)
    if image_prefix is not None and not any(im.startswith(image_prefix) for im in images):
        return False
    if text_only is not None and text_only == has_image(row):
        return False
    if contains is not None and contains not in json.dumps(row, ensure_ascii=False, default=lambda _: ""):
        return False
    return True


def filter_rows(rows: Iterable[dict], image_prefix=None, text_only=None, contains=None) -> Iterator[dict]:
    """The rows kept. When none is, stderr says so, with the images' first folders, which is where a wrong
    --image-prefix shows (mix665k's TextVQA images are under textvqa/)."""
    kept, folders = 0, collections.Counter()
    for row in rows:
        if keep(row, image_prefix, text_only, contains):
            kept += 1
            yield row
        else:
            folders.update(image.split("/")[0] + "/" for image in image_list(row) if "/" in image)
    if not kept:
        seen = ", ".join(f"{folder} ({n:,})" for folder, n in folders.most_common(6))
        print("warning: no row matched" + (f"; the images' first folders: {seen}" if seen else ""), file=sys.stderr)


def repeat(path: Path | str, times: int) -> Iterator[dict]:
    if times < 1:
        raise LlavatuneError(f"--times must be at least 1, got {times}.")
    for _ in range(times):
        yield from rows_of(path)


def split(path: Path | str, val: float, seed: int, by: str = "image") -> tuple[Iterator[dict], Iterator[dict]]:
    """A seeded split: round(N * val) rows (val a fraction below 1), or `val` rows (a whole number from 1), go to
    validation. by="image" keeps the rows that share an image on one side (several questions on one photo, a row
    repeated): whole groups are taken in a seeded order while they fit, so validation may come out a little short
    of the size asked, which is said on stderr. by="row" draws rows, exactly. (train rows, validation rows), each
    read again from the file as it is written (a dataset with its images inside is not held in memory); standard
    input is read once and kept."""
    if not (0 < val < 1 or (val >= 1 and val == int(val))):
        raise LlavatuneError(f"--val is a fraction between 0 and 1 (0.1) or a number of rows (200), got {val}.")
    if by not in ("image", "row"):
        raise LlavatuneError(f"--by is image or row, got {by!r}.")
    kept = list(rows_of(path)) if str(path) == "-" else None
    groups = image_groups(kept if kept is not None else rows_of(path), by)
    n_rows = sum(map(len, groups))
    n_val = max(1, round(n_rows * val)) if val < 1 else int(val)
    if n_val >= n_rows:
        raise LlavatuneError(f"--val {val:g}: {path} has {n_rows} rows; leave some to train on.")
    chosen: set[int] = set()
    for group in random.Random(seed).sample(groups, len(groups)):
        if len(chosen) + len(group) <= n_val:
            chosen.update(group)
        if len(chosen) == n_val:
            break
    if not chosen:
        raise LlavatuneError(f"--val {val:g}: every image of {path} is in more than {n_val} rows, so no validation "
                             "set of that size leaves the training images out. Ask for more (--val), or split rows "
                             "(--by row).")
    if len(chosen) < n_val:
        print(f"note: validation has {len(chosen):,} rows, not {n_val:,}: rows that share an image stay on one "
              "side (--by row splits rows exactly)", file=sys.stderr)

    def part(held_out: bool) -> Iterator[dict]:
        rows = kept if kept is not None else rows_of(path)
        return (row for i, row in enumerate(rows) if (i in chosen) == held_out)
    return part(False), part(True)


def image_groups(rows: Iterable[dict], by: str = "image") -> list[list[int]]:
    """Row numbers (from 0) in groups, in the order of their first rows: rows that share an image, directly or
    through other rows, form one group (by="image"); every row alone for by="row", text-only rows, and images
    inside a table that stores no file name beside them (their bytes are not read to compare them)."""
    parent: dict[int | str, int | str] = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]  # path halving: chains stay short
            key = parent[key]
        return key

    n = 0
    for n, row in enumerate(rows, 1):
        for image in _image_names(row, f"row {n}") if by == "image" else ():
            parent[root(n - 1)] = root(image)
    groups: dict[int | str, list[int]] = collections.defaultdict(list)
    for i in range(n):
        groups[root(i)].append(i)
    return list(groups.values())


def _image_names(row: dict, where: str) -> list[str]:
    try:
        images = to_record(row, where).images
    except DataError:  # a bad row: alone, as `data validate` would report it
        return []
    return [name for name in map(imagelib.key, images) if name]


def write_split(path: Path | str, val: float, seed: int, out: Path, by: str = "image") -> list[tuple[Path, int]]:
    """`data split`: out/train.json and out/val.json, or .parquet files for parquet / arrow data (whose images are
    inside). Returns (file, rows written) for each."""
    suffix = ".parquet" if is_table(path) else ".json"
    files = [out / f"train{suffix}", out / f"val{suffix}"]
    return [(file, write_rows(file, rows)) for file, rows in zip(files, split(path, val, seed, by))]


def mix(sources: list[str], seed: int) -> list[dict]:
    """Sources as FILE or FILE:WEIGHT; weight 0.5 keeps a seeded half of the rows, 2 repeats them twice,
    2.5 twice plus a seeded half. The result is shuffled with the seed. A table's images are read into the rows
    here, in file order: written in shuffled order, each would cost a read of its whole row group."""
    rng = random.Random(seed)
    out: list[dict] = []
    for source in sources:
        weighted = re.fullmatch(r"(.+):([0-9]*\.?[0-9]+)", source)  # hf://datasets/... has a ':' of its own
        path, weight = (weighted.group(1), float(weighted.group(2))) if weighted else (source, 1.0)
        rows = [_images_read(row) for row in rows_of(path)]
        whole, frac = int(weight), weight - int(weight)
        out += rows * whole + rng.sample(rows, round(len(rows) * frac))
    rng.shuffle(out)
    return out


def _images_read(row: dict) -> dict:
    """The row with its TableImage placeholders replaced by the image ({"bytes", "path"}, as HF datasets keeps it)."""
    def read(cell):
        if isinstance(cell, list):
            return [read(c) for c in cell]
        return {"bytes": cell.read(), "path": cell.path} if isinstance(cell, TableImage) else cell

    return {k: read(v) if k in ("image", "images") else v for k, v in row.items()}


def convert_file(data: str, to: str, out: str, image_dir: Path | None = None) -> int:
    """`data convert`: the rows in the `to` layout as .json / .jsonl (or '-'), or LLaVA rows with their images
    inside as .parquet. For .parquet, `image_dir` is where the rows' image files are read; for JSON, where the
    images held in the data (parquet / arrow bytes, data URIs) are unpacked to. Returns the rows written."""
    if to not in ROW_LAYOUTS:
        raise LlavatuneError(f"--to must be llava, sharegpt or messages, got '{to}'.")
    if str(out).endswith(".parquet"):
        if to != "llava":
            raise LlavatuneError(f"--out {out}: a parquet file holds LLaVA rows, not {to} ones: leave out --to.")
        # JSON rows may gain fields anywhere (a first pass finds them all); a table's columns are its own
        columns = None if is_table(data) or data == "-" else column_types(map(extra_fields, read_records(data)))
        return write_parquet(out, read_records(data), image_dir, columns=columns)
    records = read_records(data) if image_dir is None else unpack(read_records(data), image_dir)
    return write_rows(out, (ROW_LAYOUTS[to](record) for record in records))


def convert(rows: Iterable[dict], to: str) -> Iterator[dict]:
    for n, row in enumerate(rows, 1):
        yield ROW_LAYOUTS[to](to_record(row, f"row {n}"))


def sharegpt_row(record: Record) -> dict:
    row = llava_row(record)
    images = row.pop("image", None)
    if images is not None:
        row["images"] = images if isinstance(images, list) else [images]
    return row


def messages_row(record: Record) -> dict:
    """OpenAI messages; each `<image>` tag becomes an image_url part naming the file."""
    images = iter(record.images)
    messages = []
    for role, text in record.turns:
        if "<image>" not in text:
            messages.append({"role": role, "content": text})
            continue
        parts = []
        for k, piece in enumerate(text.split("<image>")):
            if k > 0:
                ref = next(images)
                if not isinstance(ref, str):
                    raise DataError(f"{record.source}: its images are inside the data (bytes); unpack them into a "
                                    "folder with --images DIR.")
                parts.append({"type": "image_url", "image_url": {"url": ref}})
            piece = piece.removeprefix("\n") if k > 0 else piece
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    return {"id": record.id, "messages": messages, **extra_fields(record)}


ROW_LAYOUTS = {"llava": llava_row, "sharegpt": sharegpt_row, "messages": messages_row}


def from_folders(root: Path, question: str, answers: dict[str, str]) -> list[dict]:
    """Class folders (root/OK/*.png, root/NG/*.png, ...) -> one Q/A row per image; the answer is the class's
    --answer text, or the class name. Image paths are relative to root (use --images root). Hidden folders and
    files (.thumbs/, macOS ._x.jpg copies) are not photos; a class without a photo is an error, not a class the
    model never sees. The count per class, and of the files passed over, goes to stderr."""
    root = Path(root)
    if not root.is_dir():
        raise LlavatuneError(f"{root}: not a folder of class folders.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise LlavatuneError(f"{root}: no class folders inside (expected for example {root}/OK and {root}/NG).")
    unknown = set(answers) - {c.name for c in classes}
    if unknown:
        raise LlavatuneError(f"--answer names class(es) {', '.join(sorted(unknown))} with no folder under {root}; "
                             f"classes found: {', '.join(c.name for c in classes)}.")
    rows, counts, passed_over = [], {}, 0
    for folder in classes:
        files = sorted(f for f in folder.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(folder).parts))
        photos = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not photos:
            raise LlavatuneError(f"{folder}: no photos ({' '.join(IMAGE_SUFFIXES)}) in this class folder; add them, "
                                 "or move the folder out of the root.")
        counts[folder.name], passed_over = len(photos), passed_over + len(files) - len(photos)
        for f in photos:
            rel = f.relative_to(root).as_posix()
            rows.append({"id": rel, "image": rel, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": answers.get(folder.name, folder.name)}]})
    other = f"; {passed_over} other file(s) passed over" if passed_over else ""
    print("photos per class: " + ", ".join(f"{name} {n}" for name, n in counts.items()) + other, file=sys.stderr)
    print(f"image paths are relative to {root}: pass --images {root} (images={root} in training)", file=sys.stderr)
    return rows


def render_conversation(conversation_json: str, template_name: str, generation_prompt: bool,
                        model: Path | None = None) -> str:
    """The `data render` contract: a JSON list of {"from", "value"} turns -> the exact training text (or the
    generation prompt for the last assistant turn)."""
    from llavatune.data.formats import llava_turns
    from llavatune.data.templates import get_template, render

    try:
        turns = json.loads(conversation_json)
    except json.JSONDecodeError as err:
        raise DataError(f"<stdin>: not valid JSON ({err.msg}); expected a list of {{\"from\", \"value\"}} turns.") from None
    if isinstance(turns, dict):
        turns = turns.get("conversations", turns.get("messages"))
    tokenizer = None
    if model is not None:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(model)
    elif template_name == "hf":
        raise LlavatuneError("--template hf renders with a model's own chat template: add --model DIR (a llava-hf "
                             "folder or its LLM).")
    return render(get_template(template_name), llava_turns(turns, "<stdin>"), generation_prompt, tokenizer)
