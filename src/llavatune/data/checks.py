"""`data validate`: find every bad row before training does, and say where and why.

Per row: schema and roles, turn order, empty replies, `<image>` tags vs images, image files (inside the
folder, present, decodable), duplicates; with a model: supervised tokens left, answers the tokenizer can only
spell as unknown tokens, and length with image tokens.
Rows are streamed, so memory stays flat on the 665K-row LLaVA mix.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
from pathlib import Path

from rich.table import Table

from llavatune import hub, progress
from llavatune.data import images as imagelib
from llavatune.data.formats import IMAGE_TAG, BadLine, DataError, Record, beside, iter_rows, to_record, with_suffix
from llavatune.data.pack import atomic_file  # data that cannot be read leaves no report file
from llavatune.errors import LlavatuneError

console = progress.messages
NEAR_TAG = re.compile(r"<\s*image\s*>", re.IGNORECASE)  # <Image>, < image >: meant as the tag, read as text


@dataclasses.dataclass
class ValidateConfig:
    data: Path
    images: Path | None = None       # folder (or .zip archive) the image paths are relative to, or a table of
    #   images by id
    model: Path | None = None        # a llava-hf folder: adds token checks (supervised tokens, max length)
    template: str | None = None      # overrides the model's template
    max_length: int = 2048
    decode: bool = True              # open every image (slower, finds corrupt files)
    report: Path | None = None       # where to write `file:row: reason` lines (default: DATA.errors.txt)
    prompt_suffix: str = ""          # as the run's prompt_suffix: token checks on the questions as training asks them


@dataclasses.dataclass
class Report:
    """Counts per problem; each problem line goes straight to `sink` so memory stays flat."""
    sink: object
    rows: int = 0
    bad_rows: int = 0
    lines: int = 0
    problems: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, where: str, reason: str, detail: str) -> None:
        self.problems[reason] += 1
        self.lines += 1
        self.sink.write(f"{where}: {reason}: {detail}\n")


def structural_problems(record: Record) -> list[tuple[str, str]]:
    """(reason, detail) for turn order, empty replies and image-tag count; no file or token access."""
    out = []
    turns = record.turns[1:] if record.turns and record.turns[0][0] == "system" else record.turns
    roles = [r for r, _ in turns]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    if roles == expected and roles and roles[-1] == "user":
        out.append(("no answer", "the last turn is the user's; a training row ends with the assistant's answer (a "
                                 "set of questions only is for `llavatune eval`, which answers them)"))
    elif roles != expected or not roles or roles[-1] != "assistant":
        out.append(("roles do not alternate", f"expected user, assistant, ... ending with assistant; got "
                                              f"{', '.join(roles) or 'no turns'}"))
    if any(role == "assistant" and not text.strip() for role, text in turns):
        out.append(("empty assistant turn", "an assistant turn has no text"))
    tags = sum(text.count(IMAGE_TAG) for _, text in record.turns)
    if tags != len(record.images):
        near = sorted({m for _, text in record.turns for m in NEAR_TAG.findall(text)} - {IMAGE_TAG})
        fix = (f"write {IMAGE_TAG} for {', '.join(map(repr, near))} (lower case, no spaces)" if near else
               "list one image per tag, or remove the extra tag")
        out.append(("<image> count mismatch", f"{tags} {IMAGE_TAG} tag(s) but {len(record.images)} image(s); {fix}"))
    return out


def main(cfg: ValidateConfig) -> Report:
    text_side = None
    if cfg.model is not None:
        from llavatune.model.meta import load_text_side
        text_side = load_text_side(cfg.model, cfg.template)
    path, seen, name = report_path(cfg), {}, hub.data_name(cfg.data)
    with atomic_file(path) as tmp, tmp.open("w") as sink, console.status(f"validating {name}") as status:
        report = Report(sink)
        for row_number, row in iter_rows(Path(cfg.data), keep_bad_lines=True):
            report.rows += 1
            if report.rows % 20000 == 0:
                status.update(f"validating {name}: {report.rows:,} rows")
            before = report.lines
            check_row(row, f"{name}:{row_number}", cfg, text_side, report, seen)
            report.bad_rows += report.lines > before
    if not report.lines:
        path.unlink()
    write_report(cfg, report, text_side is not None)
    if report.bad_rows:
        raise LlavatuneError(f"{report.bad_rows:,} of {report.rows:,} rows have problems; see {report_path(cfg)}.")
    return report


def check_row(row, where: str, cfg: ValidateConfig, text_side, report: Report, seen: dict) -> None:
    if isinstance(row, BadLine):
        report.add(where, "not valid JSON", row.message.split(": ", 1)[-1])
        return
    try:
        record = with_suffix(to_record(row, where), cfg.prompt_suffix)
    except DataError as err:
        reason = "unknown role" if "unknown role" in str(err) else "schema"
        report.add(where, reason, str(err).split(": ", 1)[-1])
        return
    structural = structural_problems(record)
    for reason, detail in structural:
        report.add(where, reason, detail)
    for ref in record.images:
        _check_image(ref, where, cfg, report)
    digest = hashlib.blake2b(json.dumps([record.turns, [str(i) for i in record.images]]).encode(), digest_size=8)
    key = int.from_bytes(digest.digest(), "little")  # 8 bytes a row: flat memory on 665K rows
    if key in seen:
        report.add(where, "duplicate", f"same images and turns as row {seen[key]}")
    else:
        seen[key] = int(where.rsplit(":", 1)[-1])
    if text_side is not None and not structural:
        _check_tokens(record, where, cfg, text_side, report)


def _check_image(ref, where: str, cfg: ValidateConfig, report: Report) -> None:
    try:
        if cfg.decode or isinstance(ref, bytes):
            imagelib.check(ref, cfg.images, where)
        elif not imagelib.exists(ref, cfg.images, where):
            raise DataError(f"{where}: image '{ref}' not found under {cfg.images}.")
    except DataError as err:
        message = str(err).split(": ", 1)[-1]
        reason = ("image path escapes the folder" if "leaves the image folder" in message else
                  "image missing" if "not found" in message or "no image folder" in message else
                  "image cannot be decoded")
        report.add(where, reason, message)


def _check_tokens(record: Record, where: str, cfg: ValidateConfig, text_side, report: Report) -> None:
    from llavatune.data.tokenize import IGNORE_INDEX, Dropped, tokenize_turns, truncate

    try:
        full = tokenize_turns(record.turns, text_side.template, text_side.tokenizer, text_side.image_token_id,
                              text_side.image_seq_length, max_length=10**9)
    except LlavatuneError as err:
        report.add(where, "template cannot render", str(err))
        return
    if isinstance(full, Dropped):
        report.add(where, full.reason, full.detail)
        return
    unk = text_side.tokenizer.unk_token_id
    supervised_unk = sum(1 for t, label in zip(full.input_ids, full.labels) if t == unk and label != IGNORE_INDEX)
    if unk is not None and supervised_unk:
        report.add(where, "answer has unknown tokens",
                   f"{supervised_unk} answer tokens are {text_side.tokenizer.unk_token}: the tokenizer cannot "
                   "spell this text (e.g. Chinese on a vocabulary without it or byte fallback), so the model "
                   "learns to answer <unk>. Use an LLM whose tokenizer covers the language.")
    n = len(full.input_ids)
    if n > cfg.max_length:
        cut = truncate(full, text_side.image_token_id, cfg.max_length)
        consequence = (f"dropped in training ({cut.reason})" if isinstance(cut, Dropped)
                       else "its end is cut in training")
        report.add(where, "longer than max_length",
                   f"{n} tokens with image tokens > max_length {cfg.max_length}; {consequence}")


def report_path(cfg: ValidateConfig) -> Path:
    return cfg.report or beside(cfg.data, ".errors.txt")


def write_report(cfg: ValidateConfig, report: Report, tokens_checked: bool) -> None:
    # a line of its own: as the table's title it wrapped to the two narrow columns' width
    console.print(f"{hub.data_name(cfg.data)}: {report.rows:,} rows, {report.bad_rows:,} with problems")
    table = Table()
    table.add_column("problem")
    table.add_column("rows", justify="right")
    for reason, count in report.problems.most_common():
        table.add_row(reason, f"{count:,}")
    if not report.problems:
        table.add_row("[green]none[/green]", "0")
    console.print(table)
    if not tokens_checked:
        console.print("token checks (supervised tokens, max length) skipped: pass --model to run them")
    if report.lines:
        console.print(f"bad rows written to {report_path(cfg)}")
