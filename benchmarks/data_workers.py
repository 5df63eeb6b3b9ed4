"""How much of a step waits for its data, with and without `data_workers` (docs/training.md has the results).

    python benchmarks/data_workers.py --work /tmp/dw --workers 0 1 2 [--threads 1] [--steps 12]

A tiny LLM with a CLIP-style processor at 336 px (576 image tokens) trains LoRA at batch 16 on 320 photo-like
640x480 JPEGs, so that decoding and processing the images costs what it costs with LLaVA-1.5's encoder while
the model itself is cheap. `--threads 1` leaves the model one core, standing in for a GPU whose host cores
would otherwise idle. Prints and writes (JSON) the median step time, data wait and samples/s of steps 3 on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image


def prepare(work: Path) -> None:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from llavatune.build import BuildConfig, main as build
    from llavatune.model.tiny import tiny_llm_config, tiny_tokenizer, tiny_vision_config

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer("llama")
    AutoModelForCausalLM.from_config(tiny_llm_config("llama", len(tokenizer), tokenizer)).save_pretrained(work / "llm")
    tokenizer.save_pretrained(work / "llm")
    AutoModel.from_config(tiny_vision_config("clip", image_size=336, patch_size=14)).save_pretrained(work / "vision")
    build(BuildConfig(out=work / "model", llm=str(work / "llm"), vision=str(work / "vision")))
    rng = np.random.default_rng(0)
    (work / "images").mkdir()
    rows = []
    for i in range(320):  # smooth colour fields plus noise: ~120 KB at quality 90, like a COCO photo
        field = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(field).astype(np.int16) + rng.integers(-20, 20, (480, 640, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(work / "images" / f"{i}.jpg", quality=90)
        rows.append({"id": str(i), "image": f"images/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture in a few words."},
            {"from": "gpt", "value": "A colourful blurry pattern with some noise in it."}]})
    (work / "qa.json").write_text(json.dumps(rows))


def measure(work: Path, workers: int, threads: int | None, steps: int) -> dict:
    out = work / f"run-w{workers}-t{threads}"
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run(["llavatune", "train", "tiny-lora", f"model={work / 'model'}", f"data={work / 'qa.json'}",
                    f"images={work}", f"out={out}", f"steps={steps}", "batch_size=16", f"data_workers={workers}",
                    "save_every=0", "report_to=[]", "resume=auto"], env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][2:]
    median = {key: statistics.median(r[key] for r in rows) for key in ("step_s", "data_wait_s", "samples_per_s")}
    return {"workers": workers, "threads": threads, **median, "losses": [r["loss"] for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if not (args.work / "qa.json").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        prepare(args.work)
    results = [measure(args.work, w, args.threads, args.steps) for w in args.workers]
    base = results[0]["samples_per_s"]
    for r in results:
        print(f"data_workers={r['workers']}: step {r['step_s']:.3f} s, data wait {r['data_wait_s']:.3f} s, "
              f"{r['samples_per_s']:.1f} samples/s ({r['samples_per_s'] / base:.2f}x), same losses: "
              f"{r['losses'] == results[0]['losses']}")
    report = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(), "results": results}
    (args.work / "data_workers.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
