"""Verb `eval`: answer an evaluation set with one or two models (greedy by default), score, write results.

    llavatune eval models/tiny --data data/val.json --images data --compare models/tiny-tuned --out runs/eval

Writes predictions.jsonl (one row per sample and model), metrics.json
({"n": N, "models": {"<label>": {"exact_match": ...}}}, labels `base` and `finetuned` when comparing),
report.md / report.html / metrics.png, and answers-<label>.jsonl in LLaVA's benchmark-script layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import torch
from rich.table import Table

from llavatune import hub, progress
from llavatune.config import check_bounds, read_run_config, save_run_config
from llavatune.data import images as imagelib
from llavatune.data.features import key as image_key
from llavatune.data.formats import (DataError, Record, missing, mmmu_options, read_records, with_ocr_tokens,
                                   with_suffix)
from llavatune.data.loader import auto_workers, in_workers
from llavatune.errors import LlavatuneError
from llavatune.inference.generate import GenerationConfig, answers, encode
from llavatune.inference.journal import Journal, files_stamp, fingerprint
from llavatune.metrics import (anls, choice_right, exact_match, mmbench_letter, mmbench_scores, mme_label,
                               mme_scores, mmmu_right, mmmu_scores, ocrbench_right, ocrbench_scores, pope_scores,
                               relaxed_correct, relaxed_scores, vqa_accuracy, yes_or_no, yesno_scores)
from llavatune.model import load as loadlib
from llavatune.report import metric_table, trained_count, write_all

console = progress.messages
METRICS = ("em", "vqa", "yesno", "pope", "choice", "mme", "mmbench", "mmmu", "anls", "relaxed", "ocrbench")


@dataclasses.dataclass
class EvalConfig:
    model: Path
    data: Path
    out: Path
    images: Path | None = None
    compare: Path | None = None      # a second model (the fine-tuned one): labels base / finetuned
    adapter: Path | None = None      # or: the same model with this adapter as the second model
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["em"])  # em, vqa, yesno, pope, choice, mme,
    #   mmbench, mmmu, anls (DocVQA, InfoVQA), relaxed (ChartQA), ocrbench
    limit: int | None = None
    batch_size: int = 1              # batch 1 by default for comparability; batched answers are identical
    max_new_tokens: int = 32
    template: str | None = None      # default: each model's own
    device: str = "auto"
    data_workers: int | Literal["auto"] = "auto"  # processes opening images and encoding the next batches;
    #   auto: up to 4 on a GPU, none on a CPU (as in train)
    prompt_suffix: str = ""          # added to every question: text, or short / word / letter / letter-cn /
    #   unanswerable (formats.SUFFIXES)
    ocr_tokens: bool = False         # TextVQA rows: their "ocr_tokens" after the question, as LLaVA-1.5 asks them

    def __post_init__(self):
        hub.local_out(self.out)  # the Python API too: a Path folds hf://x to a local hf:/x folder
        check_bounds(self, above_zero=("limit", "batch_size", "max_new_tokens"))


@dataclasses.dataclass
class Sample:
    record: Record
    question_turns: list[tuple[str, str]]   # every turn before the last answer
    answer: str | None                      # the reference (last assistant turn); None in a questions-only set


@dataclasses.dataclass(frozen=True)
class Share:
    """This process's part of the questions: every world-th one from its rank (`eval --gpus/--procs` starts
    `world` processes under torchrun; one process answers them all)."""
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Share":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def device(self, asked: str) -> str:
        """Each process on its own GPU (LOCAL_RANK of those CUDA_VISIBLE_DEVICES shows)."""
        if self.world > 1 and asked in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{os.environ.get('LOCAL_RANK', self.rank)}"
        return asked

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def samples(cfg: EvalConfig) -> list[Sample]:
    """The rows as questions and references. A set whose rows all end with the question (a benchmark's test
    split, a list of questions) is answered without scores; a set that mixes the two is an error."""
    out = []
    for record in read_records(cfg.data):
        record = with_suffix(with_ocr_tokens(record) if cfg.ocr_tokens else record, cfg.prompt_suffix)
        if not record.turns:
            raise LlavatuneError(f"{record.source}: no turns; an evaluation row needs a question.")
        answered = record.turns[-1][0] == "assistant"
        if out and answered != (out[0].answer is not None):
            raise LlavatuneError(f"{record.source}: {'a' if answered else 'no'} reference answer, unlike "
                                 f"{out[0].record.source}; give every row its answer (scored), or none (answers only).")
        question, answer = (record.turns[:-1], record.turns[-1][1]) if answered else (record.turns, None)
        out.append(Sample(record, question, answer))
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
    imagelib.check_images((s.record for s in out), cfg.images, "--images")
    if out and not any(s.record.images for s in out) and Share.from_env().rank == 0:  # GQA's keep them elsewhere
        console.print(f"warning: none of the {len(out)} questions in {cfg.data} has an image: they are asked as text "
                      "only")
    return out


def trained_on(folder: Path) -> list[tuple[Path, str | None]]:
    """The data (file, image folder) of the runs that made the model in `folder`, as their run records name them,
    where the data is still on this machine: a merged model's adapter run, then the model each run started from
    (stage 2's stage 1). Hub data and models without records (a hub id, a converted checkpoint) give none."""
    found, seen, folder = [], set(), Path(folder).resolve()
    while folder not in seen:
        seen.add(folder)
        run = read_run_config(folder) or {}
        data = (run.get("data") or {}).get("file")
        if run.get("verb") == "train" and data and Path(data).exists():
            found.append((Path(data), (run.get("config") or {}).get("images")))
        model = run.get("model") or {}
        up = model.get("merged_from") or model.get("base")
        if not up or not Path(up).is_dir():
            break
        folder = Path(up).resolve()
    return found


def shown_in_training(label: str, folder: Path, items: list[Sample], image_dir: Path | None) -> int:
    """How many questions show an image that the runs behind the model in `folder` trained on (trained_on); a
    warning names the first: the model's answers to those measure what it remembers more than how it sees."""
    rows = {}  # question's row -> the image
    for data, images in trained_on(folder):
        try:
            with console.status(f"{label}: looking for these images in its training data, {data}"):
                rows.update(imagelib.shared([s.record for s in items], read_records(data), image_dir, images))
        except (DataError, LlavatuneError) as err:  # changed since: the check is left, the evaluation goes on
            console.print(f"note: {label}: its training data could not be read to look for these images: {err}")
    if rows:
        where, name = next(iter(rows.items()))
        console.print(f"warning: {label}: {len(rows)} of {len(items)} questions show images that it was trained on "
                      f"(the first: {where}, {name}); its answers to them measure memory more than new images. "
                      "`llavatune data split` keeps the rows of an image on one side.")
    return len(rows)


def benchmark_metric(items: list[Sample]) -> tuple[str, str] | None:
    """(the metric, what in the rows shows it) when the rows have the layout of a benchmark whose own score is not
    exact match, read from the rows (never from the file's name); else None."""
    rows = [s.record.raw for s in items if s.record.raw]
    if not rows or items[0].answer is None:
        return None
    first = rows[0]
    if "question_type" in first and "options" in first:
        return "mmmu", "MMMU's question_type and options"
    if any(isinstance(r.get("index"), int) and r["index"] >= 1_000_000 for r in rows):
        return "mmbench", "MMBench's rotated copies (index + k x 1,000,000)"
    if isinstance(first.get("answer"), list):
        return "ocrbench", "OCRBench's list of accepted answers in 'answer'"
    if first.get("type") in ("human_test", "augmented_test"):
        return "relaxed", "ChartQA's human_test / augmented_test type"
    if {r.get("category") for r in rows} <= {"adversarial", "popular", "random"} and "category" in first:
        return "pope", "POPE's adversarial / popular / random categories"
    if isinstance(first.get("answers"), list) and len(first["answers"]) == 10:
        return "vqa", "ten human answers per question, as VQAv2 and TextVQA have"
    if isinstance(first.get("choices", first.get("options")), list) or "A" in first or "choice_a" in first:
        return "choice", "options to choose from, answered by letter"
    return None


def answer_all(model_path: Path, adapter: Path | None, items: list[Sample], cfg: EvalConfig,
               label: str = "model", share: Share = Share()) -> tuple[list[str], dict, int, Journal]:
    """The model's answers, its parameter counts (total; trained in the run that made it, when known), how many
    answers ran into max_new_tokens before their end of turn, and the journal they were written to as they came
    (journal.py): answers found there from a killed run of the same evaluation are not asked again. With several
    processes each answers its share and waits for the others; the first returns all the answers, the others
    none."""
    from llavatune.inference.api import load

    loaded = load(model_path, adapter=adapter, device=share.device(cfg.device), template=cfg.template)
    journal = Journal(cfg.out, label, _fingerprint(cfg, items, loaded, model_path, adapter), share.rank)
    done = journal.done()
    if done and share.rank == 0:
        console.print(f"resuming: {len(done):,} of {len(items):,} answers of {label} come from an earlier run "
                      f"({journal.folder})")
    mine = [i for i in range(share.rank, len(items), share.world) if i not in done]
    batches = [mine[start:start + cfg.batch_size] for start in range(0, len(mine), cfg.batch_size)]
    encoded = in_workers(_Encoded([[items[i] for i in b] for b in batches], loaded.processor, loaded.template,
                                  cfg.images), auto_workers(cfg.data_workers, loaded.device))
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens)
    where = f", process 1 of {share.world}" if share.world > 1 else ""  # the others run alike, without a bar
    bar = progress.bar(len(mine), f"answering ({label}{where})", unit="sample", disable=share.rank > 0)
    for batch, inputs in zip(batches, encoded):
        if isinstance(inputs, str):  # a missing or undecodable image, named by the worker
            raise LlavatuneError(inputs)
        for i, got in zip(batch, answers(loaded.model, loaded.processor, loaded.template, inputs, gen,
                                         loaded.device)):
            journal.add(i, got.text, got.finish_reason)
        bar.update(len(batch))
    bar.close()
    journal.close()
    share.barrier()  # every share written
    params = {"total": sum(p.numel() for n, p in loaded.model.named_parameters() if "original_module" not in n),
              "trained": trained_count(loaded.source)}
    if share.rank > 0:  # the first process reads the answers, scores and writes, then removes the journal
        return [], params, 0, journal
    done = journal.done()
    return [done[i]["text"] for i in range(len(items))], params, \
        sum(done[i]["finish_reason"] == "length" for i in range(len(items))), journal


def _fingerprint(cfg: EvalConfig, items: list[Sample], loaded, model_path: Path, adapter: Path | None) -> str:
    """What this model's answers depend on: the model (its paths and files: a retrained model at the same path
    answers anew; the device and dtype it runs in), the options that change answers, and every question as
    asked. The batch size does not change them (tested)."""
    model = [str(model_path), str(adapter), files_stamp(loaded.source), loaded.device.type, str(loaded.model.dtype),
             files_stamp(loadlib.resolve(model_path)) if adapter is not None else []]
    options = [str(getattr(cfg, k)) for k in ("data", "images", "limit", "max_new_tokens", "template",
                                              "prompt_suffix", "ocr_tokens")]
    questions = [(s.record.id, s.question_turns, [image_key(im) for im in s.record.images]) for s in items]
    return fingerprint(model, options, questions)


class _Encoded(torch.utils.data.Dataset):
    """Batch k of samples -> its encoded prompts and images (generate.encode), or the error of a bad image."""

    def __init__(self, batches: list[list[Sample]], processor, template, image_dir: Path | None):
        self.batches, self.processor, self.template, self.image_dir = batches, processor, template, image_dir

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict | str:
        batch = self.batches[k]
        try:
            pil = [[imagelib.load(ref, self.image_dir, s.record.source) for ref in s.record.images] for s in batch]
        except DataError as err:
            return str(err)
        return encode(self.processor, self.template, [s.question_turns for s in batch], pil)


def scored(items: list[Sample]) -> bool:
    return bool(items) and items[0].answer is not None


def gt_answers(sample: Sample) -> list[str]:
    """The human answers of a VQA row ("answers": 10 strings or {"answer": ...} dicts), the accepted answers of an
    OCRBench row ("answer" as a list), else the reference."""
    row = sample.record.raw or {}
    raw = row["answer"] if isinstance(row.get("answer"), list) else row.get("answers")
    if not raw:
        return [sample.answer]
    return [a["answer"] if isinstance(a, dict) else str(a) for a in raw]


def check_metrics(metrics: list[str]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise LlavatuneError(f"{f'unknown metric {unknown[0]!r}' if unknown else 'no metric given'}; available: "
                             f"{', '.join(METRICS)}.")


def score(preds: list[str], items: list[Sample], metrics: list[str]) -> dict[str, float]:
    check_metrics(metrics)
    refs, n, out = [s.answer for s in items], max(1, len(items)), {}
    if "em" in metrics:
        out["exact_match"] = sum(per_sample(preds, items, "em")) / n
    if "vqa" in metrics:
        out["vqa_accuracy"] = sum(per_sample(preds, items, "vqa")) / n
    if "yesno" in metrics:
        out.update(yesno_scores(preds, refs))
    if "pope" in metrics:
        out.update(pope_scores(preds, refs, [pope_category(s) for s in items]))
    if "choice" in metrics:
        out["choice_accuracy"] = sum(per_sample(preds, items, "choice")) / n
    if "mme" in metrics:
        try:
            out.update(mme_scores(preds, refs, *zip(*(mme_image_and_category(s) for s in items))))
        except ValueError as err:
            raise LlavatuneError(f"--metrics mme: {err}") from None
    if "mmbench" in metrics:
        out.update(mmbench_scores(preds, refs, *zip(*(mmbench_row(s) for s in items))))
    if "mmmu" in metrics:
        try:
            out.update(mmmu_scores([r == 1 for r in per_sample(preds, items, "mmmu")], [mmmu_row(s)[2] for s in items]))
        except ValueError as err:
            raise LlavatuneError(f"--metrics mmmu: {err}") from None
    if "anls" in metrics:
        out["anls"] = sum(per_sample(preds, items, "anls")) / n
    if "relaxed" in metrics:
        out.update(relaxed_scores([r == 1 for r in per_sample(preds, items, "relaxed")],
                                  [(s.record.raw or {}).get("type") for s in items]))
    if "ocrbench" in metrics:
        out.update(ocrbench_scores([r == 1 for r in per_sample(preds, items, "ocrbench")],
                                   [(s.record.raw or {}).get("question_type") for s in items]))
    return out


def per_sample(preds: list[str], items: list[Sample], metric: str) -> list[float]:
    """Each answer's own score under `metric`, for the reports' marks: 1 right, 0 wrong, and VQA's share of the
    human answers in between. The rule is the metric's (a letter for choice, yes/no for POPE ...), so that the
    marks agree with the score they add up to."""
    refs = [s.answer for s in items]
    if metric == "vqa":
        return [vqa_accuracy(p, gt_answers(s)) for p, s in zip(preds, items)]
    if metric == "anls":
        return [anls(p, gt_answers(s)) for p, s in zip(preds, items)]
    if metric in ("yesno", "pope"):
        right = [yes_or_no(p) == yes_or_no(r) for p, r in zip(preds, refs)]
    elif metric == "mme":
        right = [mme_label(p) == mme_label(r) for p, r in zip(preds, refs)]
    elif metric == "choice":
        right = list(map(choice_right, preds, refs))
    elif metric == "relaxed":
        right = list(map(relaxed_correct, preds, refs))
    elif metric == "ocrbench":
        datasets = [(s.record.raw or {}).get("dataset") for s in items]  # HME100k's formulas: spaces do not count
        right = [ocrbench_right(p, gt_answers(s), d) for p, s, d in zip(preds, items, datasets)]
    elif metric == "mmmu":
        right = [mmmu_right(p, r, *mmmu_row(s)) for p, r, s in zip(preds, refs, items)]
    elif metric == "mmbench":  # this row (one copy of its question) alone
        right = [mmbench_letter(p, mmbench_row(s)[1]) == r.strip().upper() for p, r, s in zip(preds, refs, items)]
    else:
        return [exact_match(p, r) for p, r in zip(preds, refs)]
    return [float(r) for r in right]


def pope_category(sample: Sample) -> str:
    """adversarial / popular / random: the row's "category" (LLaVA's llava_pope_test.jsonl, lmms-lab/POPE)."""
    category = (sample.record.raw or {}).get("category")
    if not category:
        raise LlavatuneError(f"--metrics pope: {sample.record.source} has no \"category\" (adversarial, popular or "
                             "random), which POPE scores apart; use --metrics yesno for one score over all rows.")
    return str(category)


def mme_image_and_category(sample: Sample) -> tuple[str, str]:
    """The image a question pairs on, and its MME category: the row's "category", else the image's first folder
    (MME's own layout, `code_reasoning/0020.png`, as in LLaVA's llava_mme.jsonl)."""
    ref = sample.record.images[0] if sample.record.images else sample.record.id
    category = (sample.record.raw or {}).get("category")
    if isinstance(ref, str):
        return ref, category or ref.split("/")[0]
    if not category:
        raise ValueError(f"{sample.record.source}: its image is inside the data, with no folder to name its "
                         "category; give the row a \"category\".")
    # pairs by content: each row of a parquet file holds its own copy of the image
    return hashlib.sha1(imagelib.embedded(ref, sample.record.source)).hexdigest(), category


def mmbench_row(sample: Sample) -> tuple[int, dict[str, str], str | None, str | None]:
    """The row's MMBench index (its copies with rotated options share it modulo 1e6), its options {"A": text},
    category and l2-category (the hub's tables spell it "L2-category")."""
    raw = sample.record.raw or {}
    if not isinstance(raw.get("index"), int):
        raise LlavatuneError(f"--metrics mmbench: {sample.record.source} has no integer \"index\"; CircularEval "
                             "groups an MMBench table's rows by it. Score other multiple-choice sets with "
                             "--metrics choice.")
    options = {letter: raw[letter] for letter in "ABCD" if not missing(raw.get(letter))}
    return raw["index"], options, raw.get("category"), raw.get("l2-category", raw.get("L2-category"))


def mmmu_row(sample: Sample) -> tuple[str, list[str], str]:
    """An MMMU row's question type, options and id (validation_Art_1: the subject is read from it)."""
    raw = sample.record.raw or {}
    if "question_type" not in raw or "id" not in raw:
        raise LlavatuneError(f"--metrics mmmu: {sample.record.source} is not an MMMU row (\"id\", \"question_type\", "
                             "\"options\", \"answer\").")
    options = mmmu_options(raw, sample.record.source) if raw["question_type"] == "multiple-choice" else []
    return raw["question_type"], options, str(raw["id"])


def main(cfg: EvalConfig) -> dict:
    if cfg.compare is not None and cfg.adapter is not None:
        raise LlavatuneError("give either --compare MODEL2 or --adapter RUN, not both.")
    check_metrics(cfg.metrics)  # before the answering, not after it
    share = Share.from_env()
    if share.world > 1 and not torch.distributed.is_initialized():
        import datetime  # answering may take hours; a process that fails stops the others through torchrun

        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    if share.rank > 0:  # one progress bar and one copy of each library warning: the first process's
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    items = samples(cfg)
    if scored(items):  # the references as answers: rows a metric cannot score (no MMBench index ...) fail now
        score([s.answer for s in items], items, cfg.metrics)
    if cfg.metrics == ["em"] and (found := benchmark_metric(items)) and share.rank == 0:
        console.print(f"note: these rows have {found[1]}; --metrics {found[0]} scores them as that benchmark does "
                      "(exact match alone will not match its published numbers)")
    runs = {"base" if (cfg.compare or cfg.adapter) else "model": (cfg.model, None)}
    if cfg.compare is not None:
        runs["finetuned"] = (cfg.compare, None)
    elif cfg.adapter is not None:
        runs["finetuned"] = (cfg.model, cfg.adapter)
    # a wrong second path is said now, not after the first has answered
    folders = {label: loadlib.resolve(adapter or model_path) for label, (model_path, adapter) in runs.items()}
    predictions, params, result = {}, {}, {"n": len(items), "models": {}, "cut_at_max_new_tokens": {}}
    if share.rank == 0:  # said before the answering, which may take hours
        shown = {label: shown_in_training(label, folder, items, cfg.images) for label, folder in folders.items()}
        if any(shown.values()):
            result["shown_in_training"] = shown
    marks = {}  # per model: each answer's score under the first metric, for the reports
    journals = []
    for label, (model_path, adapter) in runs.items():
        with torch.no_grad():
            predictions[label], params[label], cut, journal = answer_all(model_path, adapter, items, cfg, label,
                                                                         share)
        journals.append(journal)
        if share.rank > 0:
            continue
        result["models"][label] = score(predictions[label], items, cfg.metrics) if scored(items) else {}
        if scored(items):
            marks[label] = per_sample(predictions[label], items, cfg.metrics[0])
        result["cut_at_max_new_tokens"][label] = cut
    if share.rank > 0:  # the first process writes the results
        return result
    write(cfg.out, items, predictions, result)
    save_run_config(cfg.out, "eval", cfg, result=result)
    write_all(cfg.out, items, predictions, result, params, cfg.images, marks, cfg.metrics[0])
    for journal in journals:  # the answers are in the results now
        journal.remove_all()
    if scored(items):
        print_table(result)
    else:
        console.print(f"{len(items)} questions without reference answers: answers written, nothing scored")
    cut = result["cut_at_max_new_tokens"]
    if any(cut.values()):  # a score can only be read knowing whether the answers were whole
        console.print(f"answers cut at max_new_tokens={cfg.max_new_tokens}: "
                      + ", ".join(f"{label} {n} of {len(items)}" for label, n in cut.items()))
    console.print(f"report: {cfg.out / 'report.html'} (and report.md, {'metrics.png, ' if scored(items) else ''}"
                  "predictions.jsonl)")
    return result


def write(out: Path, items: list[Sample], predictions: dict[str, list[str]], result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w") as f:
        for i, s in enumerate(items):
            row = {"id": s.record.id, "question": s.question_turns[-1][1], "reference": s.answer,
                   "images": [im if isinstance(im, str) else "<bytes>" for im in s.record.images]}
            row.update({label: preds[i] for label, preds in predictions.items()})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict) -> None:
    header, rows = metric_table(result)
    table = Table(title=f"{result['n']} samples")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    progress.results.print(table)
