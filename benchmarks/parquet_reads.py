"""What drawing one sample's image from a parquet dataset costs, by the size of the file's row groups: a sample
reads its image's whole row group (parquet reads column chunks, not rows). docs/data.md has results.

    python benchmarks/parquet_reads.py [--rows 2048]

Writes `--rows` photo-like 640x480 JPEGs (COCO's size, quality 90, about 100 KB) into parquet files in HF datasets'
image layout: in row groups of 100 rows (as HF datasets writes image datasets), of 256 rows (`data convert` before
2026-12-03) and as `data convert` writes them now (data/pack.py: about GROUP_BYTES of images per group). Then reads
the images of 200 rows in a random order through the rows' placeholders (TableImage.read), as training draws them
from a large dataset (no group read twice), and prints milliseconds per image against decoding it, and the time to
read every row's text, as a run does at its start.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llavatune.data import pack, tables
from llavatune.data.formats import read_records
from llavatune.data.images import load


def photos(n: int, folder: Path) -> list[dict]:
    """n JPEGs of smooth colour + noise, and their LLaVA rows."""
    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([(x / 16) % 256, (y / 12) % 256, ((x + y) / 20) % 256], -1)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i}.jpg", quality=90)
        rows.append({"id": str(i), "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Colours."}]})
    return rows


def measure(path: Path, order: list[int]) -> tuple[float, float, int]:
    """(ms per image read in `order`, ms to read every row, row groups)."""
    import pyarrow.parquet as pq

    start = time.perf_counter()
    records = list(read_records(path))
    scan = time.perf_counter() - start
    start = time.perf_counter()
    for i in order:
        tables._table_column.cache_clear()  # as on a dataset of many groups: the group drawn is not the last one
        records[i].images[0].read()
    return (time.perf_counter() - start) / len(order) * 1e3, scan * 1e3, pq.ParquetFile(path).num_row_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    args = parser.parse_args()
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {args.rows} rows")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "rows.json").write_text(json.dumps(photos(args.rows, tmp)))
        kb = np.mean([f.stat().st_size for f in tmp.glob("*.jpg")]) / 1024
        order = random.Random(0).sample(range(args.rows), min(200, args.rows))
        start = time.perf_counter()
        for i in order[:50]:
            load(f"{i}.jpg", tmp, "photo")
        decode = (time.perf_counter() - start) / 50 * 1e3
        print(f"decode one {kb:.0f} KB JPEG: {decode:.2f} ms")
        now = pack.GROUP_BYTES
        results = {}
        for name, rows, group_bytes in (("100 rows per group (HF datasets)", 100, float("inf")),
                                        ("256 rows per group (before)", 256, float("inf")),
                                        (f"{now >> 20} MB of images per group (now)", 256, now)):
            pack.GROUP_BYTES = group_bytes
            path = tmp / f"{rows}-{group_bytes}.parquet"
            pack.write_parquet(path, read_records(tmp / "rows.json"), tmp, chunk=rows)
            read, scan, groups = measure(path, order)
            results[name] = read
            print(f"{name:36s} {groups:4d} groups: {read:6.2f} ms per image read ({read / decode:.2f}x decoding), "
                  f"all rows' text {scan:.0f} ms")
        pack.GROUP_BYTES = now
        before, after = results["256 rows per group (before)"], results[f"{now >> 20} MB of images per group (now)"]
        print(f"read per image, before / now: {before / after:.1f}x")


if __name__ == "__main__":
    main()
