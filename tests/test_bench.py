"""`bench train --shape tiny --baseline hf --steps 3` runs both trainers on the same batches and reports."""

from __future__ import annotations

import json

import pytest

from llavatune.bench import BenchConfig, synthetic
from llavatune.cli import run
from llavatune.model import shapes


def test_bench_tiny_against_hf(tmp_path, capsys):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        run(["bench", "train", "--shape", "tiny", "--baseline", "hf", "--steps", "3", "--out", str(out)])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "ours / hf" in printed
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ours", "hf"} and report["ratio_samples_per_s"] > 0
    assert report["device"] and report["date"] and report["versions"]["torch"]


def test_llava665k_length_mix():
    cfg = BenchConfig(shape="llava15-7b", lengths="llava665k")
    samples = synthetic(cfg, shapes.known("llava15-7b"), 2000)
    share = sum(s["has_image"] for s in samples) / len(samples)
    assert 0.92 < share < 0.955  # 93.9% of the LLaVA-1.5 mix has an image
    assert all(len(s["input_ids"]) <= 2048 for s in samples)
    assert max(len(s["input_ids"]) for s in samples) > 576 + 300  # a long tail, not fixed lengths


def benchmark_script(name: str, *args: str) -> str:
    """What benchmarks/NAME prints, run as a user runs it; a failure shows its stderr."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / name
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_image_prep_benchmark_runs():
    """benchmarks/image_prep.py (quoted in docs/training.md) runs, and its pixel-equality check holds."""
    rows = [line for line in benchmark_script("image_prep.py", "--repeat", "1").splitlines() if "processor" in line]
    assert len(rows) == 6 and all("x)" in row for row in rows)


def test_parquet_reads_benchmark_runs():
    """benchmarks/parquet_reads.py (quoted in docs/data.md) runs; its groups are the sizes it says."""
    printed = benchmark_script("parquet_reads.py", "--rows", "120")
    groups = [int(line.split("groups:")[0].split()[-1]) for line in printed.splitlines() if "groups:" in line]
    assert groups[:2] == [2, 1] and groups[2] >= 3  # 100 rows, 256 rows, ~4 MB of ~100 KB photos
    assert "before / now" in printed
