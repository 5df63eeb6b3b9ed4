"""Run logging: metrics.jsonl always, TensorBoard when installed, W&B only when asked; loss/lr curve PNG; the
progress shown while training."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

from llavatune import progress

SHOWN = ("loss", "lr", "samples_per_s", "tokens_per_s", "mem_gib")  # of a step's row, on the bar or line


class Progress:
    """The run's progress, on rank 0: a live bar on a terminal or in a notebook. Written to a file (nohup, a
    cluster scheduler, CI), a bar's carriage-return updates pile up into one line of megabytes; there it is a
    plain line at the first step, then every `every_s` seconds, and at the last, with the time left."""

    def __init__(self, total: int, initial: int, main: bool, every_s: float = 30.0):
        self.live = main and progress.live()
        self.lines = main and not self.live
        self.bar = progress.bar(total, "train", initial=initial, disable=not self.live)
        self.total, self.first, self.every_s = total, initial + 1, every_s
        self.started = self.printed = time.perf_counter()

    def update(self, row: dict) -> None:
        shown = {k: row[k] for k in SHOWN if k in row}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)
        now, step = time.perf_counter(), row["step"]
        if not self.lines or (now - self.printed < self.every_s and step not in (self.first, self.total)):
            return
        self.printed = now
        left = datetime.timedelta(seconds=round((now - self.started) / (step - self.first + 1) * (self.total - step)))
        loss = f"loss {shown['loss']:.4f}, " if "loss" in shown else "no update, "
        print(f"train step {step}/{self.total}: {loss}lr {shown['lr']:.3g}, {shown['samples_per_s']:,.1f} samples/s, "
              f"{shown['tokens_per_s']:,.0f} tokens/s, {shown['mem_gib']:.2f} GiB, {left} left", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        self.bar.close()


class RunLogger:
    def __init__(self, out: Path, report_to: list[str], config: dict, resume_step: int = 0):
        self.path = Path(out) / "metrics.jsonl"
        self.rows = _truncate(self.path, resume_step, create=True)
        self.answers_path = Path(out) / "eval_answers.jsonl"  # held-out answers during training (eval_answers)
        _truncate(self.answers_path, resume_step, create=False)
        self.tb = self.wandb = None
        self.notes: list[str] = []
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
            except ImportError:
                self.notes.append("TensorBoard logging skipped: pip install tensorboard")
        if "wandb" in report_to:
            import wandb  # asked for explicitly: a missing package is the user's error to see
            self.wandb = wandb.init(project="llavatune", name=Path(out).name, config=config)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and self.tb is not None:
                tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                self.tb.add_scalar(tag, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])

    def log_answers(self, rows: list[dict]) -> None:
        if rows:
            with self.answers_path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def plot(self, path: Path) -> None:
        plot_curves(self.rows, path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _truncate(path: Path, upto: int, create: bool) -> list[dict]:
    """Keep the rows of steps up to `upto` (where a resumed run continues; 0: a new run keeps none)."""
    if not path.is_file():
        if create:
            path.write_text("")
        return []
    lines = path.read_text(encoding="utf-8").splitlines() if upto else []
    rows = [r for r in (json.loads(line) for line in lines if line.strip()) if r.get("step", 0) <= upto]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss (and eval loss when logged) and learning rate against optimizer steps."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list to change

    steps = [r["step"] for r in rows if "loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    fig = Figure(figsize=(10, 3.5))
    ax_loss, ax_lr = fig.subplots(1, 2)
    if len(losses) >= 20:  # step-to-step noise hides the trend: the raw curve faint, a moving average on top
        ax_loss.plot(steps, losses, color="#3b6ea8", alpha=0.3, linewidth=0.8)
        ax_loss.plot(steps, smooth(losses), label="train loss (smoothed)", color="#3b6ea8")
    else:
        ax_loss.plot(steps, losses, label="train loss", color="#3b6ea8")
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if evals:
        ax_loss.plot(*zip(*evals), "o-", label="eval loss", color="#c0504d")
    values = [r[k] for r in rows for k in ("loss", "eval_loss") if k in r]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax_loss.set_yscale("log")  # from ~7 at random init to ~0.01: the late part would be a flat line
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in rows if "loss" in r], color="#4f8a3a")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def smooth(values: list[float]) -> list[float]:
    """A moving average centred on each point (the window shrinks towards the ends, so the first and last points
    are their own): unlike an exponential average it does not lag behind a falling loss. Positive values are
    averaged as logarithms, since a loss falls by decades: the mean of 1.0 and 0.01 is 0.5, far above both on a
    log axis; their geometric mean, 0.1, is between them, and an exponential decay is its own average."""
    import math

    half = max(2, len(values) // 40)  # 150 steps: 9 points; 5,000 steps: 251
    logs = all(v > 0 for v in values)
    points = [math.log(v) for v in values] if logs else list(values)
    out = []
    for i in range(len(points)):
        h = min(half, i, len(points) - 1 - i)
        mean = sum(points[i - h:i + h + 1]) / (2 * h + 1)
        out.append(math.exp(mean) if logs else mean)
    return out
