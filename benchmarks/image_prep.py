"""What one image costs a core before the vision tower: decoding, then the processor alone against
`images.pixels` (PIL pads and resizes first; the same pixel values, checked here). docs/training.md has results.

    python benchmarks/image_prep.py [--repeat 5]

Photo-like JPEGs (smooth colour + noise, quality 90) at COCO size, TextVQA size and a 12 MP phone photo, through
LLaVA-1.5's CLIP-336 processor with pad-to-square (`pad`) and CLIP's own shortest-edge + centre crop (`crop`).
Prints the best of `--repeat` timings of each, in seconds, and the ratio old / new.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llavatune.data.images import load, pixels
from llavatune.model.compose import _image_processor

SIZES = {"coco 640x480": (640, 480), "textvqa 1024x768": (1024, 768), "phone 4032x3024": (4032, 3024)}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def photo(width: int, height: int, path: Path) -> None:
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([(x / 16) % 256, (y / 12) % 256, ((x + y) / 20) % 256], -1)
    noisy = smooth + np.random.default_rng(0).normal(0, 12, smooth.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def best(f, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, one thread")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height) in SIZES.items():
            photo(width, height, Path(tmp) / "p.jpg")
            decode = best(lambda: load("p.jpg", Path(tmp), name), args.repeat)
            image = load("p.jpg", Path(tmp), name)
            for aspect in ("pad", "crop"):
                ip = _image_processor(336, aspect, CLIP_MEAN, CLIP_STD)
                old = best(lambda: ip([image], return_tensors="pt")["pixel_values"], args.repeat)
                new = best(lambda: pixels([image], ip), args.repeat)
                assert torch.equal(ip([image], return_tensors="pt")["pixel_values"], pixels([image], ip))
                print(f"{name:17s} {aspect:4s}  decode {decode:.4f}  processor {old:.4f} -> {new:.4f} "
                      f"({old / new:.2f}x)  with decoding {decode + old:.4f} -> {decode + new:.4f} "
                      f"({(decode + old) / (decode + new):.2f}x)")


if __name__ == "__main__":
    main()
