"""`data stats` (counts, length histogram with image tokens, a PNG) and `data preview` (one rendered sample,
supervised text highlighted, token counts)."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

from rich.table import Table
from rich.text import Text

from llavatune import hub, progress
from llavatune.data.formats import DataError, beside, iter_rows, to_record, with_suffix
from llavatune.errors import LlavatuneError

console = progress.results


@dataclasses.dataclass
class StatsConfig:
    data: Path
    model: Path | None = None      # counts tokens (with image tokens) with this model's tokenizer and template
    plot: Path | None = None       # PNG of the length histogram (default: DATA.lengths.png)
    limit: int | None = None       # only the first N rows
    images: Path | None = None     # also the sizes of (up to `image_sample`) images, read from their headers
    image_sample: int = 1000       # images measured, spread evenly over the rows that have one
    prompt_suffix: str = ""        # as the run's prompt_suffix: lengths of the questions as training asks them


@dataclasses.dataclass
class PreviewConfig:
    data: Path
    model: Path
    index: int = 0                 # row number, from 0
    template: str | None = None
    max_length: int = 2048
    prompt_suffix: str = ""        # as the run's prompt_suffix: the question as training asks it


def stats(cfg: StatsConfig) -> dict:
    text_side = _text_side(cfg.model)
    counts: collections.Counter = collections.Counter()
    lengths: list[int] = []
    refs: list[tuple[str | bytes, str]] = []  # (image, row) of every row, for the size sample
    name = hub.data_name(cfg.data)
    for n, (row_number, row) in enumerate(iter_rows(Path(cfg.data))):
        if cfg.limit is not None and n >= cfg.limit:
            break
        try:
            record = with_suffix(to_record(row, f"{name}:{row_number}"), cfg.prompt_suffix)
        except DataError:
            counts["unreadable"] += 1
            continue
        counts["rows"] += 1
        counts["text-only" if not record.images else "multi-image" if len(record.images) > 1 else "one image"] += 1
        counts["turns"] += len(record.turns)
        lengths.append(_length(record, text_side))
        refs += [(ref, record.source) for ref in record.images[:1]]
    unit = "tokens (with image tokens)" if text_side else "words (pass --model for tokens)"
    result = {"rows": counts["rows"], "text_only": counts["text-only"], "one_image": counts["one image"],
              "multi_image": counts["multi-image"], "unreadable": counts["unreadable"],
              "mean_turns": counts["turns"] / max(1, counts["rows"]), "length_unit": unit,
              **_percentiles(lengths)}
    if cfg.images is not None:
        result.update(_image_sizes(refs, cfg.images, cfg.image_sample))
    _print_stats(name, result)
    if result.get("images_over_4mp"):
        console.print("large images: a 12 MP photo takes ~0.25 s of a core to decode and resize each time its sample "
                      "is drawn (docs/scenario-defects.md); train with vision_cache=true (frozen tower) or "
                      "data_workers, or shrink the files once.")
    plot = cfg.plot or beside(cfg.data, ".lengths.png")
    _plot(lengths, unit, plot)
    console.print(f"length histogram: {plot}")
    return result


def _image_sizes(refs: list[tuple[str | bytes, str]], image_dir: Path, sample: int) -> dict:
    """Megapixels of up to `sample` images spread evenly over the rows, from their headers (no decoding): what
    each costs to decode and resize every time a sample is drawn. Unreadable ones are for `data validate`."""
    from PIL import Image

    from llavatune.data.images import DECODE_ERRORS, source

    step = max(1, len(refs) // max(1, sample))
    pixels = []
    for ref, where in refs[::step][:sample]:
        try:
            with Image.open(source(ref, image_dir, where)) as img:
                pixels.append(img.width * img.height / 1e6)
        except (DataError, *DECODE_ERRORS):  # past PIL's pixel limit too: data validate names those
            continue
    if not pixels:
        return {"images_measured": 0}
    pixels.sort()
    pick = lambda q: pixels[min(len(pixels) - 1, int(q * len(pixels)))]  # noqa: E731
    return {"images_measured": len(pixels), "megapixels_p50": pick(0.5), "megapixels_p95": pick(0.95),
            "megapixels_max": pixels[-1], "images_over_4mp": sum(mp > 4 for mp in pixels)}


def _text_side(model):
    if model is None:
        return None
    from llavatune.model.meta import load_text_side
    return load_text_side(model)


def _length(record, text_side) -> int:
    if text_side is None:
        return sum(len(text.split()) for _, text in record.turns)
    from llavatune.data.tokenize import Dropped, tokenize_turns
    out = tokenize_turns(record.turns, text_side.template, text_side.tokenizer, text_side.image_token_id,
                         text_side.image_seq_length, max_length=10**9)
    return 0 if isinstance(out, Dropped) else len(out.input_ids)


def _percentiles(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"length_mean": sum(ordered) / len(ordered), "length_p50": pick(0.5), "length_p95": pick(0.95),
            "length_max": ordered[-1]}


def _print_stats(data, result: dict) -> None:
    table = Table(title=str(data), show_header=False)
    for key, value in result.items():
        table.add_row(key, _number(value) if isinstance(value, (int, float)) else str(value))
    console.print(table)


def _number(value: int | float) -> str:
    """1,234 / 131.5 / 0.0041: a small share (megapixels of a 64x64 image) keeps two digits instead of reading 0.0."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if value == 0 or abs(value) >= 0.1 else f"{value:.2g}"


def _plot(lengths: list[int], unit: str, path: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list to change

    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.hist(lengths or [0], bins=50, color="#3b6ea8")
    ax.set_xlabel(f"length in {unit}")
    ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def preview(cfg: PreviewConfig) -> dict:
    from llavatune.data.templates import segments
    from llavatune.data.tokenize import Dropped, tokenize_turns
    from llavatune.model.meta import load_text_side

    text_side, name = load_text_side(cfg.model, cfg.template), hub.data_name(cfg.data)
    for n, (row_number, row) in enumerate(iter_rows(Path(cfg.data))):
        if n == cfg.index:
            break
    else:
        raise LlavatuneError(f"{name}: --index {cfg.index} is past the last row (there are {n + 1 if n else 0}).")
    record = with_suffix(to_record(row, f"{name}:{row_number}"), cfg.prompt_suffix)
    shown = Text()
    for text, supervised in segments(text_side.template, record.turns, tokenizer=text_side.tokenizer):
        shown.append(text, style="bold green" if supervised else "dim")
    console.print(shown)
    out = tokenize_turns(record.turns, text_side.template, text_side.tokenizer, text_side.image_token_id,
                         text_side.image_seq_length, cfg.max_length)
    if isinstance(out, Dropped):
        console.print(f"[red]dropped in training[/red]: {out.reason} ({out.detail})")
        return {"dropped": out.reason}
    info = {"tokens": len(out.input_ids), "supervised": out.n_supervised,
            "image_tokens": out.n_images * text_side.image_seq_length, "images": record.images}
    console.print(f"template {text_side.template.name}: {info['tokens']} tokens "
                  f"({info['image_tokens']} image, {info['supervised']} supervised, shown in green)")
    return info
