"""Deterministic synthetic datasets (LLaVA JSON + PNG files) with real visual signal and short answers.

- shapes: coloured shapes on a light background. `captions.json` (stage 1: one `<image>` + caption) and
  `qa.json` (stage 2: questions about colour, shape, count or position with one-word answers, so exact match
  is a fair score).
- defects: grey parts in `OK/` and `NG/` folders (NG has a dark scratch), plus `defects.json` with the
  inspection question; the folders also feed `data from-folders`.
The same seed gives the same files, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llavatune.config import check_bounds
from llavatune.hub import local_out

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTIONS = {
    "colour": "What colour is the shape? Answer with one word.",
    "shape": "Which shape is it? Answer with one word.",
    "count": "How many shapes are there? Answer with one word.",
    "position": "Where is the shape? Answer with one word.",
}
QUESTIONS_ZH = {  # lang=zh: the same tasks as Chinese instruction data
    "colour": "图中形状是什么颜色？用一个词回答。",
    "shape": "这是什么形状？用一个词回答。",
    "count": "图中有几个形状？用一个词回答。",
    "position": "形状在哪里？用一个词回答。",
}
WORDS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "circle": "圆形", "square": "正方形",
            "triangle": "三角形", "one": "一个", "two": "两个", "three": "三个", "left": "左边", "right": "右边",
            "top": "上边", "bottom": "下边"}
CAPTION_PROMPT = "Describe the image briefly."
DEFECT_QUESTION = "Is this part OK or NG? Answer with one word."


@dataclasses.dataclass
class SynthConfig:
    out: Path
    kind: str = "shapes"            # shapes | defects
    n: int = 200                    # images (defects: per class)
    seed: int = 0
    size: int = 64                  # image side in pixels
    tasks: list[str] = dataclasses.field(default_factory=lambda: ["colour", "shape"])
    lang: str = "en"                # en | zh (shapes questions and answers in Chinese)

    def __post_init__(self):
        local_out(self.out)
        check_bounds(self, above_zero=("n", "size"))
        if self.lang not in ("en", "zh"):
            raise ValueError(f"lang must be en or zh, got {self.lang!r}")
        if self.kind not in ("shapes", "defects"):
            raise ValueError(f"kind must be shapes or defects, got {self.kind!r}")
        unknown = [t for t in self.tasks if t not in QUESTIONS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(QUESTIONS)}")


def main(cfg: SynthConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    (shapes if cfg.kind == "shapes" else defects)(out, cfg, rng)
    return out


def shapes(out: Path, cfg: SynthConfig, rng: np.random.Generator) -> None:
    (out / "images").mkdir(exist_ok=True)
    captions, qa = [], []
    for i in range(cfg.n):
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        count = int(rng.integers(1, 4)) if "count" in cfg.tasks else 1
        position = str(rng.choice(POSITIONS))
        name = f"images/shape_{i:05d}.png"
        draw_shapes(cfg.size, colour, shape, count, position, rng).save(out / name)
        noun = shape if count == 1 else f"{shape}s"
        caption = f"{NUMBERS[count]} {colour} {noun} at the {position}"
        captions.append(_row(f"cap-{i}", name, CAPTION_PROMPT, caption))
        task = cfg.tasks[i % len(cfg.tasks)]
        answer = {"colour": colour, "shape": shape, "count": NUMBERS[count], "position": position}[task]
        if cfg.lang == "zh":
            qa.append(_row(f"qa-{i}", name, QUESTIONS_ZH[task], WORDS_ZH[answer]))
        else:
            qa.append(_row(f"qa-{i}", name, QUESTIONS[task], answer))
    _write(out / "captions.json", captions)
    _write(out / "qa.json", qa)


def draw_shapes(size: int, colour: str, shape: str, count: int, position: str,
                rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(img)
    r = size // 7
    # region of the requested half; several shapes are spread along it
    cx0, cy0 = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}[position]
    for k in range(count):
        offset = (k - (count - 1) / 2) * 2.2 * r
        cx = int(cx0 * size + (offset if position in ("top", "bottom") else 0) + rng.integers(-2, 3))
        cy = int(cy0 * size + (offset if position in ("left", "right") else 0) + rng.integers(-2, 3))
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def defects(out: Path, cfg: SynthConfig, rng: np.random.Generator) -> None:
    rows = []
    for label in ("OK", "NG"):
        (out / label).mkdir(exist_ok=True)
        for i in range(cfg.n):
            name = f"{label}/part_{i:04d}.png"
            draw_part(cfg.size, label == "NG", rng).save(out / name)
            rows.append(_row(f"{label}-{i}", name, DEFECT_QUESTION, label))
    _write(out / "defects.json", rows)


def draw_part(size: int, defect: bool, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    m = size // 8
    grey = int(rng.integers(150, 200))
    draw.rectangle([m, m, size - m, size - m], fill=(grey, grey, grey))
    if defect:
        x0, y0 = (int(v) for v in rng.integers(m + 2, size // 2, 2))
        x1, y1 = (int(v) for v in rng.integers(size // 2, size - m - 2, 2))
        draw.line([x0, y0, x1, y1], fill=(40, 20, 20), width=max(2, size // 24))
    return img


def _row(row_id: str, image: str, question: str, answer: str) -> dict:
    return {"id": row_id, "image": image, "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1) + "\n")
