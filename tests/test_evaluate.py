"""Evaluation: batched greedy answers equal one-by-one answers; comparison labels; adapter as second model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import train_config

from llavatune.data.formats import DataError
from llavatune.errors import LlavatuneError
from llavatune.evaluate import EvalConfig, main
from llavatune.train import main as train


def test_batched_equals_one_by_one_and_adapter_compare(tiny_model_dir, shapes_data, tmp_path):
    run = tmp_path / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=30", "lora.targets=all"))
    common = dict(model=tiny_model_dir, adapter=run, data=shapes_data / "qa.json", images=shapes_data, limit=12,
                  max_new_tokens=5)
    one = main(EvalConfig(out=tmp_path / "b1", batch_size=1, **common))
    many = main(EvalConfig(out=tmp_path / "b5", batch_size=5, **common))
    rows1 = [json.loads(line) for line in (tmp_path / "b1" / "predictions.jsonl").read_text().splitlines()]
    rows5 = [json.loads(line) for line in (tmp_path / "b5" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["base"], r["finetuned"]) for r in rows1] == [(r["base"], r["finetuned"]) for r in rows5]
    assert one == many and set(one["models"]) == {"base", "finetuned"} and one["n"] == 12
    # the two models do answer differently: the adapter is really attached
    assert any(r["base"] != r["finetuned"] for r in rows1)
    assert "trained" in (tmp_path / "b1" / "report.md").read_text()
    # the run trained on these very questions: its answers to them are counted as memory, the base's are not
    assert one["shown_in_training"] == {"base": 0, "finetuned": 12}
    assert "finetuned: " in (report := (tmp_path / "b1" / "report.md").read_text())
    assert "trained on the images of 12 of these 12 questions" in report.split("finetuned: ")[1].splitlines()[0]
    question = json.loads((shapes_data / "qa.json").read_text())[0]["conversations"][0]["value"]
    assert question.startswith("<image>\n")  # shown without the placeholder and its line break
    for report, cell in (("report.md", f"| {question[8:]} |"), ("report.html", f"<td>{question[8:]}</td>")):
        text = (tmp_path / "b1" / report).read_text()
        assert cell in text and "<image>" not in text and "&lt;image&gt;" not in text
    # answers cut at max_new_tokens are counted as the Python API counts them (and batched as one by one)
    import llavatune
    from llavatune.data import images as imagelib
    from llavatune.evaluate import samples

    items = samples(EvalConfig(out=tmp_path / "x", **common))
    pil = [[imagelib.load(ref, shapes_data, s.record.source) for ref in s.record.images] for s in items]
    messages = [[{"role": r, "content": t} for r, t in s.question_turns] for s in items]
    got = llavatune.load(tiny_model_dir, device="cpu").answers(messages, pil, max_new_tokens=5)
    assert one["cut_at_max_new_tokens"]["base"] == sum(a.finish_reason == "length" for a in got) > 0


def test_questions_on_images_the_model_trained_on_are_counted_through_its_runs(tmp_path, monkeypatch, capsys):
    """A merged model's records lead to its adapter run and on to the stage-1 run that one started from; the
    questions showing an image either trained on are counted, whatever folder each named the images from."""
    from llavatune.data.formats import read_records
    from llavatune.evaluate import Sample, shown_in_training, trained_on

    def folder(name, **doc):  # a model or run folder with the record train / merge write
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_config.yaml").write_text(yaml.safe_dump(doc))
        return tmp_path / name

    def data(name, *images):
        rows = [{"image": image, "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                    {"from": "gpt", "value": "A"}]} for image in images]
        (tmp_path / name).write_text(json.dumps(rows))
        return tmp_path / name

    captions, qa = data("captions.json", "a.png", "b.png"), data("qa.json", "c.png")
    stage1 = folder("stage1", verb="train", config={"images": str(tmp_path / "img")}, data={"file": str(captions)},
                    model={"base": str(tmp_path / "base-gone")})
    lora = folder("lora", verb="train", config={"images": "img"}, data={"file": str(qa)}, model={"base": str(stage1)})
    merged = folder("merged", verb="merge", model={"base": str(stage1), "merged_from": str(lora)})
    assert trained_on(merged) == [(qa, "img"), (captions, str(tmp_path / "img"))]
    assert trained_on(folder("moved", verb="train", data={"file": str(tmp_path / "gone.json")})) == []
    assert trained_on(folder("built", verb="build")) == []

    monkeypatch.chdir(tmp_path)  # where the lora run ran: its images= is relative to it
    items = [Sample(r, r.turns[:-1], r.turns[-1][1]) for r in read_records(data("val.json", "c.png", "d.png",
                                                                                "x/../a.png"))]
    assert shown_in_training("finetuned", merged, items, tmp_path / "img") == 2
    assert "finetuned: 2 of 3 questions show images that it was trained on (the first: " in capsys.readouterr().err
    assert shown_in_training("finetuned", merged, items, tmp_path / "other-img") == 0  # same names, other photos
    assert shown_in_training("finetuned", stage1, items, tmp_path / "img") == 1


def test_a_killed_evaluation_continues_where_it_stopped(tiny_model_dir, shapes_data, tmp_path, monkeypatch):
    """Answers are written as they come: the same evaluation after a kill asks only the questions left, and its
    results equal those of a run never stopped, also when another number of processes wrote the answers. Another
    option (or other model files) starts from nothing."""
    import llavatune.evaluate as evaluate

    asked = []

    def counting(model, processor, template, inputs, gen, device):
        got = real(model, processor, template, inputs, gen, device)
        asked.append(len(got))
        if killed and len(asked) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or a lost machine would, after 2 batches were written
        return got

    real, killed = evaluate.answers, True
    monkeypatch.setattr(evaluate, "answers", counting)
    common = dict(model=tiny_model_dir, data=shapes_data / "qa.json", images=shapes_data, limit=10, batch_size=2,
                  max_new_tokens=4)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        main(EvalConfig(out=out, **common))
    assert [p.name for p in out.iterdir()][0].startswith(".answers-model-")
    asked.clear()
    killed = False
    resumed = main(EvalConfig(out=out, **common))
    assert sum(asked) == 6  # 10 questions, 4 answered before the kill
    assert not list(out.glob(".answers-*"))  # the results hold the answers now
    asked.clear()
    whole = main(EvalConfig(out=tmp_path / "whole", **common))
    assert sum(asked) == 10 and whole == resumed
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()

    killed, asked[:] = True, []
    with pytest.raises(KeyboardInterrupt):
        main(EvalConfig(out=out, **common))
    killed = False
    main(EvalConfig(out=out, **{**common, "max_new_tokens": 3}))  # other answers: none of the old ones is taken
    assert sum(asked) == 3 * 2 + 10

    # the second of two processes answered its share (every second question) before the run was stopped: one
    # process then asks only the first process's share, and the results are those of the run never stopped
    monkeypatch.setattr(evaluate.Share, "barrier", lambda self: None)
    cfg, asked[:] = EvalConfig(out=tmp_path / "shared", **common), []
    evaluate.answer_all(tiny_model_dir, None, evaluate.samples(cfg), cfg, "model", evaluate.Share(rank=1, world=2))
    assert sum(asked) == 5
    assert main(cfg) == whole and sum(asked) == 10
    assert (tmp_path / "shared" / "predictions.jsonl").read_text() == (tmp_path / "whole" / "predictions.jsonl").read_text()


@pytest.mark.slow
def test_questions_shared_over_processes_give_the_same_results(tiny_model_dir, shapes_data, tmp_path):
    """`eval --procs 2` (and `--gpus 0,1`, the same launch): each process answers every second question; the
    results are those of one process."""
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "llavatune")
    common = [str(tiny_model_dir), "--data", str(shapes_data / "qa.json"), "--images", str(shapes_data),
              "--limit", "9", "--max-new-tokens", "4", "--batch-size", "2"]
    result = subprocess.run([exe, "eval", *common, "--out", str(tmp_path / "two"), "--procs", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answering (model, process 1 of 2)" in result.stderr and "process 2 of 2" not in result.stderr
    assert result.stderr.count("Loading weights:   0%") <= 1  # the first process's bar only
    main(EvalConfig(model=tiny_model_dir, data=shapes_data / "qa.json", images=shapes_data, limit=9, batch_size=2,
                    max_new_tokens=4, out=tmp_path / "one"))
    for name in ("predictions.jsonl", "metrics.json", "answers-model.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_mme_metric_takes_the_category_from_the_row_or_the_image_folder():
    from llavatune.data.formats import Record
    from llavatune.evaluate import Sample, score

    def item(image, answer, category=None):
        raw = {"category": category} if category else {}
        return Sample(Record(id=image, turns=[("user", "<image>\nIs it?")], images=[image], raw=raw), [], answer)

    items = [item("existence/1.png", "Yes"), item("existence/1.png", "No"),
             item("x/2.png", "Yes", "code_reasoning"), item("x/2.png", "No", "code_reasoning")]
    result = score(["yes", "no", "yes", "yes"], items, ["mme"])
    assert result == {"mme_perception": 200.0, "mme_cognition": 50.0, "mme_existence": 200.0,
                      "mme_code_reasoning": 50.0}
    with pytest.raises(LlavatuneError, match="two questions per image"):
        score(["yes"], items[:1], ["mme"])


def test_answers_are_marked_by_the_first_metric_as_it_scores_them():
    """The reports marked every answer by exact match: "(B) cat" was scored right by `choice` and marked wrong.
    Marks now come from the first metric's own rule, and they average to its score."""
    from llavatune.data.formats import Record
    from llavatune.evaluate import Sample, per_sample, score
    from llavatune.report import markdown, page

    def item(answer, humans=None):
        record = Record(id="1", turns=[("user", "Which?")], images=[], raw={"answers": humans} if humans else {})
        return Sample(record, [("user", "Which?")], answer)

    items, preds = [item("B"), item("A")], ["(B) cat", "B"]
    assert per_sample(preds, items, "choice") == [1.0, 0.0] and per_sample(preds, items, "em") == [0.0, 0.0]
    assert sum(per_sample(preds, items, "choice")) / 2 == score(preds, items, ["choice"])["choice_accuracy"]
    vqa = [item("dog", ["cat"] * 2 + ["dog"] * 8), item("dog", ["dog"] * 10)]
    marks = per_sample(["cat", "dog"], vqa, "vqa")
    assert marks == [pytest.approx(0.6), 1.0] and sum(marks) / 2 == score(["cat", "dog"], vqa, ["vqa"])["vqa_accuracy"]
    assert per_sample(["Yes, it is.", "No"], [item("yes"), item("yes")], "pope") == [1.0, 0.0]
    assert per_sample(["Yes", "nope"], [item("Yes"), item("No")], "mme") == [1.0, 1.0]

    result, params = {"n": 2, "models": {"model": {"vqa_accuracy": 0.8}}}, {"model": {"total": 10}}
    report = markdown(vqa, {"model": ["cat", "dog"]}, result, params, {"model": marks}, "vqa")
    assert "| cat 0.6 |" in report and "| dog ✓ |" in report and "Answers marked by `vqa`'s rule" in report
    html = page(vqa, {"model": ["cat", "dog"]}, result, params, None, {"model": marks}, "vqa")
    assert "<td class='part'>cat (0.6)</td>" in html and "<td class='ok'>dog</td>" in html


def test_mme_on_a_parquet_file_pairs_the_questions_by_image_content(tmp_path):
    """Rows of a parquet file each hold their own copy of the image: the two questions of an image pair by its
    content, and the category comes from the row (there is no folder to take it from)."""
    from PIL import Image

    from llavatune.data.formats import read_records
    from llavatune.data.pack import write_parquet
    from llavatune.evaluate import samples, score

    for colour, name in (("red", "1.png"), ("blue", "2.png")):
        Image.new("RGB", (8, 8), colour).save(tmp_path / name)
    rows = [{"id": str(i), "image": image, "category": category, "conversations": [
        {"from": "human", "value": "<image>\nIs it?"}, {"from": "gpt", "value": answer}]}
        for i, (image, category, answer) in enumerate([("1.png", "existence", "Yes"), ("1.png", "existence", "No"),
                                                      ("2.png", "code_reasoning", "Yes"),
                                                      ("2.png", "code_reasoning", "No")])]
    (tmp_path / "mme.json").write_text(json.dumps(rows))
    write_parquet(tmp_path / "mme.parquet", read_records(tmp_path / "mme.json"), tmp_path)
    items = samples(EvalConfig(model=tmp_path, data=tmp_path / "mme.parquet", out=tmp_path / "out"))
    assert score(["yes", "no", "yes", "yes"], items, ["mme"]) == {
        "mme_perception": 200.0, "mme_cognition": 50.0, "mme_existence": 200.0, "mme_code_reasoning": 50.0}
    (tmp_path / "mme.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "category"} for r in rows]))
    write_parquet(tmp_path / "bare.parquet", read_records(tmp_path / "mme.json"), tmp_path)
    items = samples(EvalConfig(model=tmp_path, data=tmp_path / "bare.parquet", out=tmp_path / "out"))
    with pytest.raises(LlavatuneError, match=r"bare.parquet:1: its image is inside the data.*give the row a"):
        score(["yes", "no", "yes", "yes"], items, ["mme"])


def test_mmbench_table_is_scored_by_circular_eval_over_its_rotated_copies(tmp_path):
    """An MMBench .tsv keeps each question's copies with rotated options as rows index + k * 1e6 (the layout of
    mmbench_dev_20230712.tsv and lmms-lab/MMBench): a question counts once, right only when every copy is."""
    from llavatune.evaluate import samples, score

    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tsplit"
    rows = [(0, "dog", "cat", "B", "ocr", "finegrained_perception (instance-level)"),
            (1000000, "cat", "dog", "A", "ocr", "finegrained_perception (instance-level)"),
            (1, "red", "blue", "A", "scene", "coarse_perception"),
            (1000001, "blue", "red", "B", "scene", "coarse_perception")]
    lines = [header] + [f"{i}\tWhich one?\t\t{a}\t{b}\t\t\t{ans}\t{cat}\t\tx\t{l2}\tdev"
                        for i, a, b, ans, cat, l2 in rows]
    (tmp_path / "mmbench_dev.tsv").write_text("\n".join(lines) + "\n")
    cfg = EvalConfig(model=tmp_path, data=tmp_path / "mmbench_dev.tsv", out=tmp_path / "out", prompt_suffix="letter")
    items = samples(cfg)
    assert items[1].question_turns[0][1] == ("Which one?\nA. cat\nB. dog\nAnswer with the option's letter from the "
                                             "given choices directly.")
    # the model sticks to the same letter: right on the first row of each question, wrong on its copy
    result = score(["B", "B", "A", "A"], items, ["choice", "mmbench"])
    assert result["choice_accuracy"] == 0.5 and result["mmbench_circular"] == 0.0
    assert score(["B", "the cat", "A", "B"], items, ["mmbench"]) == {
        "mmbench_circular": 1.0, "mmbench_unread": 0.0, "mmbench_coarse_perception": 1.0,
        "mmbench_finegrained_perception (instance-level)": 1.0, "mmbench_ocr": 1.0, "mmbench_scene": 1.0}
    (tmp_path / "plain.jsonl").write_text(json.dumps({"question": "Which?", "A": "x", "B": "y", "answer": "A"}) + "\n")
    items = samples(dataclasses.replace(cfg, data=tmp_path / "plain.jsonl"))
    with pytest.raises(LlavatuneError, match=r"plain.jsonl:1 has no integer \"index\".*--metrics choice"):
        score(["A"], items, ["mmbench"])


def test_docvqa_chartqa_and_ocrbench_rows_are_asked_as_lmms_eval_asks_them_and_scored_by_their_rules(tmp_path):
    """lmms-lab's DocVQA rows (questionId, question, answers: every accepted answer) score by ANLS against the
    closest answer; ChartQA's (question, answer, type) by relaxed accuracy, per split too. The questions end with
    lmms-eval's instructions: `short` for DocVQA, `word` for ChartQA."""
    from llavatune.evaluate import per_sample, samples, score

    docvqa = [{"questionId": 1, "question": "What is the date?", "answers": ["3/12/1988", "March 12, 1988"]},
              {"questionId": 2, "question": "Who signed?", "answers": ["J. Smith"]}]
    (tmp_path / "docvqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docvqa))
    items = samples(EvalConfig(model=tmp_path, data=tmp_path / "docvqa.jsonl", out=tmp_path / "o", prompt_suffix="short"))
    assert items[0].question_turns[0][1] == "What is the date?\nAnswer the question using a single word or phrase."
    assert per_sample(["3/12/1998", "Smith"], items, "anls") == [pytest.approx(1 - 1 / 9), 1 - 3 / 8]  # a misread
    assert per_sample(["the manager"], items[1:], "anls") == [0.0]  # digit, a partial name; another answer: 1 - 10/11
    assert score(["march 12, 1988", "j. smith"], items, ["anls", "em"]) == {"anls": 1.0, "exact_match": 0.5}

    chartqa = [{"question": "What is the peak?", "answer": "12.5", "type": "human_test"},
               {"question": "Which year?", "answer": "2019", "type": "augmented_test"}]
    (tmp_path / "chartqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chartqa))
    items = samples(EvalConfig(model=tmp_path, data=tmp_path / "chartqa.jsonl", out=tmp_path / "o", prompt_suffix="word"))
    assert items[1].question_turns[0][1] == "Which year?\nAnswer the question with a single word."
    assert score(["12", "2020"], items, ["relaxed"]) == {"relaxed_accuracy": 1.0, "relaxed_augmented": 1.0,
                                                        "relaxed_human": 1.0}  # 4% and 0.05% off
    assert score(["13.2", "twenty"], items, ["relaxed"])["relaxed_accuracy"] == 0.0

    # OCRBench's rows keep their accepted answers as a list in "answer": before, such a row had no reference and the
    # whole set was answered without a score
    ocr = [{"question": "what is written in the image?", "answer": ["CENTRAL", "central station"],
            "dataset": "IIIT5K", "question_type": "Regular Text Recognition"}]
    (tmp_path / "ocrbench.jsonl").write_text(json.dumps(ocr[0]) + "\n")
    items = samples(EvalConfig(model=tmp_path, data=tmp_path / "ocrbench.jsonl", out=tmp_path / "o"))
    assert items[0].answer == "CENTRAL"
    assert score(["It reads Central."], items, ["ocrbench", "em"]) == {
        "ocrbench_accuracy": 1.0, "ocrbench_Regular Text Recognition": 1.0, "exact_match": 0.0}


def test_a_hub_evaluation_set_in_its_own_layout(tiny_model_dir, tmp_path, capsys):
    """lmms-lab/MME's layout (question, answer, category, question_id = the image's name, image bytes): scored as
    MME with LLaVA-1.5's short-answer instruction added; the answers file keeps each question_id and the question
    as asked."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from llavatune.data import images as imagelib
    from llavatune.evaluate import samples, score

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [{"question_id": f"{category}/{colour}.png", "question": f"Is it {colour}? Please answer yes or no.",
             "answer": answer, "category": category, "image": png(colour)}
            for category, colour, answer in [("color", "red", "Yes"), ("color", "red", "No"),
                                             ("code_reasoning", "blue", "Yes"), ("code_reasoning", "blue", "No")]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    cfg = EvalConfig(model=tiny_model_dir, data=tmp_path / "test-00000-of-00001.parquet", out=tmp_path / "out",
                     metrics=["mme", "yesno"], prompt_suffix="short", max_new_tokens=2)
    items = samples(cfg)
    assert items[0].question_turns == [("user", "<image>\nIs it red? Please answer yes or no.\nAnswer the question "
                                                "using a single word or phrase.")]
    assert [s.answer for s in items] == ["Yes", "No", "Yes", "No"]
    assert score(["yes", "no", "no", "no"], items, ["mme"]) == {
        "mme_perception": 200.0, "mme_cognition": 50.0, "mme_color": 200.0, "mme_code_reasoning": 50.0}
    assert score(["yes", "no", "no", "no"], items, ["pope"]) == {  # POPE's rule, per category (here MME's)
        "pope_f1": 0.5, "pope_code_reasoning_accuracy": 0.5, "pope_code_reasoning_f1": 0.0,
        "pope_color_accuracy": 1.0, "pope_color_f1": 1.0}
    result = main(cfg)
    assert set(result["models"]["model"]) >= {"mme_perception", "yesno_accuracy"}
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers-model.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [r["question_id"] for r in rows]
    assert answers[0]["prompt"] == "Is it red? Please answer yes or no.\nAnswer the question using a single word or phrase."

    # ScienceQA's: choices and the index of the right one, asked with the letter instruction, scored by letter
    sqa = [{"question": "Which is a mammal?", "hint": "Mammals have fur.", "choices": ["frog", "cat"], "answer": 1,
            "image": png("red")}, {"question": "Which is hot?", "hint": "", "choices": ["ice", "sun"], "answer": 1,
                                   "image": png("blue")}]
    pq.write_table(pa.Table.from_pylist(sqa), tmp_path / "sqa.parquet")
    items = samples(EvalConfig(model=tiny_model_dir, data=tmp_path / "sqa.parquet", out=tmp_path, prompt_suffix="letter"))
    assert items[0].question_turns == [("user", "<image>\nContext: Mammals have fur.\nWhich is a mammal?\nA. frog\n"
                                                "B. cat\nAnswer with the option's letter from the given choices directly.")]
    assert score(["B", "A. ice"], items, ["choice"]) == {"choice_accuracy": 0.5}

    # TextVQA's, asked as LLaVA-1.5 asks them with --ocr-tokens: the OCR line after the question, then the suffix
    textvqa = [{"question_id": 34602, "question": "what brand?", "answers": ["nokia"] * 10, "image": png("red"),
                "ocr_tokens": ["nokia", "3310"]}]
    pq.write_table(pa.Table.from_pylist(textvqa), tmp_path / "textvqa.parquet")
    cfg = EvalConfig(model=tiny_model_dir, data=tmp_path / "textvqa.parquet", out=tmp_path, prompt_suffix="short")
    assert samples(dataclasses.replace(cfg, ocr_tokens=True))[0].question_turns == [
        ("user", "<image>\nwhat brand?\nReference OCR token: nokia, 3310\nAnswer the question using a single word or "
                 "phrase.")]
    assert "Reference OCR token" not in samples(cfg)[0].question_turns[0][1]

    # GQA's questions on the hub name their image (imageId), kept in a table of images (id, image) given as --images
    gqa = [{"id": "201307251", "imageId": "n161313", "question": "Is it red?", "answer": "yes"},
           {"id": "201640614", "imageId": "n235859", "question": "Is it blue?", "answer": "no"}]
    pq.write_table(pa.Table.from_pylist(gqa), tmp_path / "testdev_balanced_instructions.parquet")
    images = [{"id": "n161313", "image": png("red")}, {"id": "n235859", "image": png("blue")}]
    pq.write_table(pa.Table.from_pylist(images), tmp_path / "testdev-00000-of-00001.parquet")
    cfg = EvalConfig(model=tiny_model_dir, data=tmp_path / "testdev_balanced_instructions.parquet", out=tmp_path / "gqa",
                     images=tmp_path / "testdev-*.parquet", prompt_suffix="short", max_new_tokens=2)
    items = samples(cfg)
    assert [s.record.images for s in items] == [["n161313"], ["n235859"]]
    assert [imagelib.load(ref, cfg.images, "-").getpixel((0, 0)) for s in items for ref in s.record.images] \
        == [(255, 0, 0), (0, 0, 255)]
    main(cfg)
    predictions = [json.loads(line) for line in (tmp_path / "gqa" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["201307251", "201640614"]
    with pytest.raises(LlavatuneError, match=r"names image 'n161313', but no image folder was given: --images=DIR "
                                             r".*or the table of images that its image ids are in"):
        samples(dataclasses.replace(cfg, images=None))

    # MMMU's: options as the text of a list, images image_1..image_7 named in the question, two kinds of question
    mmmu = [{"id": "validation_Art_1", "question": "Which is bluer, <image 2> or <image 1>?", "options": "['left', 'right']",
             "answer": "B", "question_type": "multiple-choice", "image_1": png("red"), "image_2": png("blue"),
             "image_3": None},
            {"id": "validation_Math_2", "question": "How many sides? <image 1>", "options": "[]", "answer": "4",
             "question_type": "open", "image_1": png("red"), "image_2": None, "image_3": None}]
    pq.write_table(pa.Table.from_pylist(mmmu), tmp_path / "mmmu.parquet")
    cfg = EvalConfig(model=tiny_model_dir, data=tmp_path / "mmmu.parquet", out=tmp_path / "mmmu", metrics=["mmmu"],
                     max_new_tokens=2)
    items = samples(cfg)
    assert items[0].question_turns == [("user", "<image> <image>\nWhich is bluer, <image 2> or <image 1>?\nA. left\n"
                                                "B. right\n\nAnswer with the option's letter from the given choices "
                                                "directly.")]
    assert items[1].question_turns[0][1].endswith("<image 1>\n\nAnswer the question using a single word or phrase.")
    assert [imagelib.load(ref, None, "-").getpixel((0, 0)) for ref in items[0].record.images] == [(255, 0, 0),
                                                                                                 (0, 0, 255)]
    assert score(["(B)", "The answer is 4."], items, ["mmmu"]) == {"mmmu_accuracy": 1.0, "mmmu_art_and_design": 1.0,
                                                                  "mmmu_science": 1.0}
    assert set(main(cfg)["models"]["model"]) == {"mmmu_accuracy", "mmmu_art_and_design", "mmmu_science"}
    pq.write_table(pa.Table.from_pylist([{**mmmu[1], "question": "Compare <image 1> and <image 2>."}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:1: the question names <image 2>, but 'image_2' holds no image"):
        samples(dataclasses.replace(cfg, data=tmp_path / "bad.parquet"))

    # questions with no image anywhere are asked as text, and said so
    pq.write_table(pa.Table.from_pylist([{"question": "Is it red?", "answer": "yes"}]), tmp_path / "text.parquet")
    samples(EvalConfig(model=tiny_model_dir, data=tmp_path / "text.parquet", out=tmp_path))
    assert "warning: none of the 1 questions in" in capsys.readouterr().err


def test_worker_processes_give_the_same_answers_and_name_a_bad_image(tiny_model_dir, shapes_data, tmp_path):
    """Batches encoded in 2 worker processes (what `auto` does on a GPU): the answers of the main process."""
    common = dict(model=tiny_model_dir, data=shapes_data / "qa.json", images=shapes_data, limit=9, batch_size=2,
                  max_new_tokens=4)
    main(EvalConfig(out=tmp_path / "w0", data_workers=0, **common))
    main(EvalConfig(out=tmp_path / "w2", data_workers=2, **common))
    assert (tmp_path / "w0" / "predictions.jsonl").read_text() == (tmp_path / "w2" / "predictions.jsonl").read_text()
    rows = json.loads((shapes_data / "qa.json").read_text())[:4]
    rows[3]["image"] = "images/missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    with pytest.raises(LlavatuneError, match="missing.png' not found"):
        main(EvalConfig(out=tmp_path / "bad", **{**common, "data": tmp_path / "bad.json"}, data_workers=2))
    with pytest.raises(LlavatuneError, match=r"bad.json:1: the sample names image .* --images=DIR names the folder"):
        main(EvalConfig(out=tmp_path / "bad", **{**common, "data": tmp_path / "bad.json", "model": tmp_path / "none",
                                                 "images": None}))


@pytest.mark.parametrize("row,metric", [
    ({"question": "Q?", "options": ["a", "b"], "answer": "1"}, "choice"),  # AI2D
    ({"question": "Q?", "answer": ["x", "y"], "dataset": "IIIT5K"}, "ocrbench"),
    ({"question": "Q?", "answer": "yes", "category": "adversarial"}, "pope"),
    ({"question": "Q?", "answers": ["x"] * 10}, "vqa"),
    ({"question": "Q?", "answer": "12", "type": "human_test"}, "relaxed"),  # ChartQA
    ({"question": "Q?", "answer": "yes", "category": "color"}, None),  # MME's: yes/no, em reads it
    ({"question": "Q?", "answer": "x"}, None),
])
def test_a_benchmark_layout_scored_by_exact_match_gets_a_note_naming_its_metric(row, metric, tmp_path):
    """Exact match on VQAv2 or OCRBench reads far below the published numbers; the rows' layout (never the file's
    name) says which metric the benchmark scores with."""
    from llavatune.evaluate import benchmark_metric, samples

    (tmp_path / "set.jsonl").write_text(json.dumps(row) + "\n")
    found = benchmark_metric(samples(EvalConfig(model=tmp_path, data=tmp_path / "set.jsonl", out=tmp_path / "o")))
    assert (found and found[0]) == metric


def test_rows_a_metric_cannot_score_fail_before_any_model_answers(shapes_data, tmp_path):
    """--metrics mmbench on rows without MMBench's index, or mme on answers that are not yes/no, failed after every
    model had answered the whole set. The model here does not exist: the error comes before it is loaded."""
    common = dict(model=tmp_path / "no-model", data=shapes_data / "qa.json", images=shapes_data, limit=4)
    with pytest.raises(LlavatuneError, match=r"--metrics mmbench: \S*qa.json:1 has no integer \"index\""):
        main(EvalConfig(out=tmp_path / "e1", metrics=["em", "mmbench"], **common))
    with pytest.raises(LlavatuneError, match=r"--metrics mme: MME reference answers are yes or no"):
        main(EvalConfig(out=tmp_path / "e2", metrics=["mme"], **common))
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_a_second_model_that_is_not_there_fails_before_the_first_answers(tiny_model_dir, shapes_data, tmp_path):
    """A typo in --compare was found after the base had answered the whole set (hours of VQAv2 on a 7B)."""
    with pytest.raises(LlavatuneError, match=r"\S*tiny-tuned: no such model"):
        main(EvalConfig(model=tiny_model_dir, compare=tmp_path / "tiny-tuned", data=shapes_data / "qa.json",
                        images=shapes_data, out=tmp_path / "e"))
    assert not (tmp_path / "e").exists()


def test_a_questions_only_set_is_answered_not_scored(tiny_model_dir, shapes_data, tmp_path):
    """A benchmark's test split (or a list of questions) has no reference answers: the answers are written in
    LLaVA's layout, the same as those of the scored set, and nothing is scored or marked right or wrong."""
    rows = json.loads((shapes_data / "qa.json").read_text())[:4]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{**r, "conversations": r["conversations"][:1]} for r in rows]))
    common = dict(model=tiny_model_dir, images=shapes_data, max_new_tokens=4)
    result = main(EvalConfig(data=questions, out=tmp_path / "q", **common))
    scored = main(EvalConfig(data=shapes_data / "qa.json", limit=4, out=tmp_path / "s", **common))
    assert result["models"] == {"model": {}} and scored["models"]["model"]["exact_match"] >= 0
    answers = [json.loads(line) for line in (tmp_path / "q" / "answers-model.jsonl").read_text().splitlines()]
    assert answers == [json.loads(line) for line in (tmp_path / "s" / "answers-model.jsonl").read_text().splitlines()]
    # the bare question, as LLaVA's question files hold it and its eval_textvqa.py matches it
    assert [a["prompt"] for a in answers] == [r["conversations"][0]["value"].replace("<image>", "").strip() for r in rows]
    assert all("<image>" not in a["prompt"] and not a["prompt"].startswith("\n") for a in answers)
    # the same questions as one of llava/eval's question files: the same answers, under its own question ids
    llava_questions = tmp_path / "llava_questions.jsonl"
    llava_questions.write_text("".join(json.dumps({"question_id": i, "image": r["image"], "text": a["prompt"]}) + "\n"
                                       for i, (r, a) in enumerate(zip(rows, answers))))
    main(EvalConfig(data=llava_questions, out=tmp_path / "l", **common))
    from_llava = [json.loads(line) for line in (tmp_path / "l" / "answers-model.jsonl").read_text().splitlines()]
    assert [(a["question_id"], a["prompt"], a["text"]) for a in from_llava] == \
        [(i, a["prompt"], a["text"]) for i, a in enumerate(answers)]
    report = (tmp_path / "q" / "report.md").read_text()
    assert "✓" not in report and "✗" not in report and not (tmp_path / "q" / "metrics.png").exists()
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([rows[0], {**rows[1], "conversations": rows[1]["conversations"][:1]}]))
    with pytest.raises(LlavatuneError, match=r"mixed.json:2: no reference answer, unlike \S*mixed.json:1"):
        main(EvalConfig(data=mixed, out=tmp_path / "m", **common))


def test_metrics_read_as_rows_and_mme_points_get_their_own_axis():
    """With --metrics em,yesno,mme a column per metric ran off the terminal, and MME's points (0..2000) were
    drawn on the 0..1 axis of the shares, far off the chart."""
    from llavatune.report import metric_table, metrics_figure

    result = {"n": 4, "models": {
        "base": {"exact_match": 0.25, "yesno_accuracy": 0.5, "mme_perception": 1210.5, "mme_cognition": 250.0,
                 "mme_count": 150.0},
        "finetuned": {"exact_match": 0.75, "yesno_accuracy": 0.5, "mme_perception": 1510.7, "mme_cognition": 300.0,
                      "mme_count": 190.0}}}
    header, rows = metric_table(result)
    assert header == ["metric", "base", "finetuned", "change"]
    assert rows[0] == ["exact_match", "0.250", "0.750", "+0.500"]  # in the order they were scored
    assert rows[2] == ["mme_perception", "1210.5", "1510.7", "+300.2"]
    shares, points = metrics_figure(result).axes
    assert shares.get_ylim()[1] == pytest.approx(1.1) and points.get_ylim()[1] > 1510.7
    assert [t.get_text() for t in points.get_xticklabels()] == ["mme_perception", "mme_cognition"]
    mmbench = {"n": 2, "models": {"model": {"mmbench_circular": 0.5, "mmbench_unread": 0.0, "mmbench_ocr": 1.0}}}
    assert [t.get_text() for t in metrics_figure(mmbench).axes[0].get_xticklabels()] == ["mmbench_circular"]
    assert [row[0] for row in metric_table(mmbench)[1]] == ["mmbench_circular", "mmbench_unread", "mmbench_ocr"]
    assert metric_table({"n": 1, "models": {"model": {"exact_match": 1.0}}})[0] == ["metric", "model"]


def test_a_journal_line_cut_by_a_kill_is_asked_again(tmp_path):
    """The last line written when the process was killed may be cut short: that answer is not taken, and the
    answers appended after it still read."""
    from llavatune.inference.journal import Journal

    journal = Journal(tmp_path, "model", "f")
    journal.add(0, "red", "stop")
    journal.close()
    with (journal.folder / "rank0.jsonl").open("a") as f:
        f.write('{"i": 1, "text": "bl')  # killed mid-line
    journal = Journal(tmp_path, "model", "f")
    assert journal.done() == {0: {"text": "red", "finish_reason": "stop"}}
    journal.add(1, "blue", "stop")
    journal.close()
    assert journal.done()[1] == {"text": "blue", "finish_reason": "stop"}
    journal.remove_all()
    assert not list(tmp_path.iterdir())
