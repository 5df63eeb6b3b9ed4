"""Evaluation reports: report.md, report.html (thumbnails, answers, right or wrong), metrics.png, and the
answers in the jsonl layout LLaVA's benchmark scripts consume."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from llavatune.data import images as imagelib


def trained_count(folder: Path | None) -> int | None:
    """Parameters trained in the run that produced `folder` (its trainable.txt, or the one it was merged from)."""
    from llavatune.config import read_run_config

    if folder is None:
        return None
    run = read_run_config(folder) or {}
    source = Path((run.get("model") or {}).get("merged_from", folder))
    path = source / "trainable.txt"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("all "):
            return int(line.split()[1].replace(",", ""))
    return None


def write_all(out: Path, items, predictions: dict[str, list[str]], result: dict, params: dict[str, dict],
              image_dir: Path | None, marks: dict[str, list[float]], metric: str) -> None:
    """`marks`: per model, each answer's score under `metric` (evaluate.per_sample), shown beside it. Without
    reference answers (a questions-only set) the reports show the answers, unmarked, and no chart.
    An answers file's "prompt" is the bare question, as in LLaVA's question files: its eval_textvqa.py finds the
    reference by that text, split at its line breaks (a leading "<image>\n" made it fail its assert)."""
    if any(result["models"].values()):
        plot_metrics(result, out / "metrics.png")
    (out / "report.md").write_text(markdown(items, predictions, result, params, marks, metric))
    (out / "report.html").write_text(page(items, predictions, result, params, image_dir, marks, metric))
    for label, preds in predictions.items():
        with (out / f"answers-{label}.jsonl").open("w") as f:
            for s, text in zip(items, preds):
                f.write(json.dumps({"question_id": _question_id(s.record), "prompt": _question(s), "text": text,
                                    "answer_id": f"{label}-{s.record.id}", "model_id": label, "metadata": {}}) + "\n")


def _params_line(label: str, p: dict, result: dict) -> str:
    trained = f", {p['trained']:,} trained" if p.get("trained") else ""
    shown = result.get("shown_in_training", {}).get(label)
    seen = f"; trained on the images of {shown} of these {result['n']} questions" if shown else ""
    return f"{label}: {p['total']:,} parameters{trained}{seen}"


def markdown(items, predictions, result, params, marks, metric) -> str:
    labels = list(predictions)
    lines = [f"# Evaluation: {result['n']} samples", ""]
    lines += [f"- {_params_line(label, params[label], result)}" for label in labels] + [""]
    header, rows = metric_table(result)
    if rows:
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "![metrics](metrics.png)", ""]
    lines += [_marks_line(metric), ""] if marks else []
    lines += ["| id | question | reference | " + " | ".join(labels) + " |", "|---" * (3 + len(labels)) + "|"]
    for i, s in enumerate(items):
        cells = [f"{_md(predictions[label][i])} {_mark(marks, label, i)[0]}".rstrip() for label in labels]
        lines.append(f"| {s.record.id} | {_md(_question(s))} | {_md(s.answer or '')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """A row per metric, a column per model, and the change when two are compared: a column per metric ran off
    an 80-column terminal with the yes/no and MME scores (16 of them). MME gives points, the rest shares."""
    labels = list(result["models"])
    keys = list(dict.fromkeys(k for m in result["models"].values() for k in m))  # in the order they were scored
    header = ["metric", *labels] + (["change"] if len(labels) == 2 else [])
    rows = []
    for key in keys:
        values = [result["models"][label][key] for label in labels]
        digits = 1 if key.startswith("mme_") else 3
        row = [key, *(f"{v:.{digits}f}" for v in values)]
        if len(labels) == 2:
            row.append(f"{values[1] - values[0]:+.{digits}f}")
        rows.append(row)
    return header, rows


def _mark(marks: dict[str, list[float]], label: str, i: int) -> tuple[str, str]:
    """(the mark, the HTML class) of answer i: right, wrong, or the score between (VQA's partly right
    answers); nothing without references."""
    if not marks:
        return "", ""
    value = marks[label][i]
    return ("✓", "ok") if value == 1 else ("✗", "bad") if value == 0 else (f"{value:.1f}", "part")


def _marks_line(metric: str) -> str:
    return f"Answers marked by `{metric}`'s rule, each on its own: ✓ right, ✗ wrong, a number for VQA's partly right ones."


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _question_id(record) -> object:
    """The row's own id with its type (LLaVA's eval_pope.py keys by the int question_id, its MMBench converter
    matches the int index), else the record's."""
    raw = record.raw or {}
    return next((raw[key] for key in ("question_id", "id", "index") if key in raw), record.id)


def _question(sample) -> str:
    """The last question as a reader wants it: without the <image> placeholder and the line break after it."""
    return sample.question_turns[-1][1].replace("<image>", "").strip()


def page(items, predictions, result, params, image_dir, marks, metric) -> str:
    labels = list(predictions)
    rows = []
    for i, s in enumerate(items):
        cells = "".join(_html_cell(predictions[label][i], *_mark(marks, label, i)) for label in labels)
        rows.append(f"<tr><td>{_thumb(s.record, image_dir)}</td><td>{html.escape(_question(s))}</td>"
                    f"<td>{html.escape(s.answer or '')}</td>{cells}</tr>")
    header, metric_rows = metric_table(result)
    summary = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in metric_rows)
    models = "".join(f"<li>{html.escape(_params_line(label, params[label], result))}</li>" for label in labels)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>llavatune evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}.ok{{background:#e3f4e1}}.bad{{background:#fbe3e1}}.part{{background:#fbf3d5}}img{{width:64px;height:64px;image-rendering:pixelated}}
</style></head><body><h1>Evaluation: {result['n']} samples</h1>
<ul>{models}</ul>
{f"<table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{summary}</table>" if metric_rows else ''}
{'<p><img src="metrics.png" style="max-width:100%"></p>' if metric_rows else ''}
{f"<p>{html.escape(_marks_line(metric))}</p>" if marks else ''}
<table><tr><th>image</th><th>question</th><th>reference</th>{''.join(f'<th>{label}</th>' for label in labels)}</tr>
{''.join(rows)}</table></body></html>
"""


def _html_cell(answer: str, mark: str, kind: str) -> str:
    """An answer on the colour of its mark; a partly right one (VQA) with its score."""
    return f"<td class='{kind}'>{html.escape(answer)}{f' ({mark})' if kind == 'part' else ''}</td>"


def _thumb(record, image_dir) -> str:
    if not record.images:
        return ""
    try:
        img = imagelib.load(record.images[0], image_dir, record.source)
    except Exception:  # a report still renders when one image went missing since evaluation
        return "(image unavailable)"
    img.thumbnail((96, 96))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def plot_metrics(result: dict, path: Path) -> None:
    metrics_figure(result).savefig(path, dpi=100)


def metrics_figure(result: dict):
    """Bars per metric and model: the shares (0..1) on one axis; MME's perception and cognition points on a
    second, scaled to them (MME's and MMBench's per-category scores stay in the tables)."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list to change

    labels = list(result["models"])
    keys = list(dict.fromkeys(k for m in result["models"].values() for k in m))
    shares = [k for k in keys if not k.startswith(("mme_", "mmbench_")) or k == "mmbench_circular"]
    groups = [g for g in (shares,
                          [k for k in ("mme_perception", "mme_cognition") if k in keys]) if g]
    bars = sum(len(g) for g in groups) * len(labels)
    fig = Figure(figsize=(min(16.0, 1.6 + 0.7 * bars + 1.2 * (len(groups) - 1)), 3.2))
    axes = fig.subplots(1, len(groups), squeeze=False, width_ratios=[len(g) for g in groups])[0]
    for ax, group in zip(axes, groups):
        points = group[0].startswith("mme_")
        top = max([result["models"][label][k] for label in labels for k in group] + [1.0]) if points else 1.0
        _bars(ax, result, labels, group, top, "{:.0f}" if points else "{:.2f}")
        ax.set_ylabel("points" if points else "score")
    axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=len(labels), frameon=False)  # above the bars
    fig.tight_layout()
    return fig


def _bars(ax, result: dict, labels: list[str], keys: list[str], top: float, fmt: str) -> None:
    width = 0.8 / max(1, len(labels))
    colours = ["#9aa7b8", "#3b6ea8", "#4f8a3a"]
    for j, label in enumerate(labels):
        xs = [i + j * width for i in range(len(keys))]
        values = [result["models"][label][k] for k in keys]
        ax.bar(xs, values, width, label=label, color=colours[j % len(colours)])
        for x, v in zip(xs, values):
            ax.text(x, v + 0.02 * top, fmt.format(v), ha="center", fontsize=8)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(keys))], keys)
    ax.set_ylim(0, 1.1 * top)
