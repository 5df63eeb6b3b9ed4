"""Readers: LLaVA JSON/JSONL (from or role), ShareGPT, OpenAI messages, parquet with image bytes; streamed."""

from __future__ import annotations

import base64
import io
import itertools
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from llavatune.data.formats import DataError, _iter_json_array, extra_fields, iter_rows, read_records
from llavatune.data.tables import TableImage


def png_bytes(colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_llava_json_with_from_or_role(tmp_path):
    rows = [{"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                              {"from": "gpt", "value": "A"}]},
            {"id": "b", "conversations": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                          {"role": "assistant", "content": "A"}]}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    a, b = read_records(path)
    assert a.turns == [("user", "<image>\nQ"), ("assistant", "A")] and a.images == ["x.jpg"]
    assert b.turns == [("system", "S"), ("user", "Q"), ("assistant", "A")] and b.images == []
    lines = tmp_path / "d.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [r.turns for r in read_records(lines)] == [a.turns, b.turns]
    for f in (path, lines):  # saved by a Windows editor: a byte-order mark first
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        assert [r.turns for r in read_records(f)] == [a.turns, b.turns]


def test_sharegpt_images_list_and_multi_image(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "<image><image>\nCompare"},
                                                   {"from": "gpt", "value": "Same"}], "images": ["1.png", "2.png"]}]))
    (record,) = read_records(path)
    assert record.images == ["1.png", "2.png"]


def test_openai_messages_with_data_uri_and_path(tmp_path):
    uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    row = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                     {"type": "text", "text": "What colour?"}]},
                        {"role": "assistant", "content": "red"},
                        {"role": "user", "content": [{"type": "text", "text": "And this? "},
                                                     {"type": "image_url", "image_url": {"url": "b.png"}}]},
                        {"role": "assistant", "content": "blue"}]}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (record,) = read_records(path)
    assert record.turns[0] == ("user", "<image>\nWhat colour?")
    assert record.turns[2] == ("user", "And this? <image>\n")
    assert record.images[0] == png_bytes() and record.images[1] == "b.png"


def test_parquet_with_image_bytes(tmp_path):
    table = pa.table({"id": ["0", "1", "2"], "image": [{"bytes": png_bytes(), "path": None}] * 2 + [None],
                      "conversations": [[{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]] * 2
                      + [[{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]]})  # the last: text only
    pq.write_table(table, tmp_path / "train.parquet")
    records = list(read_records(tmp_path))  # a dataset folder
    assert len(records) == 3 and [im.read() for im in records[0].images] == [png_bytes()] and not records[2].images
    assert isinstance(records[0].images[0], TableImage)  # the record holds its place, not the bytes
    assert records[0].raw["image"] is records[0].images[0] and records[0].raw["id"] == "0"  # no bytes kept


@pytest.mark.parametrize("layout", ["struct", "list", "binary"])
def test_a_table_scan_leaves_the_image_bytes_in_the_file(tmp_path, monkeypatch, layout):
    """Reading a parquet dataset's rows reads the names beside its images, not the images (a 100 GB dataset is
    scanned at every start, by every rank), wherever the bytes' null count shows no image is a bare file name;
    the images read later are the same bytes. A row group holding a path-only image is read whole, so that image
    stays a file name. Arrow files (memory-mapped) give the same records."""
    import pyarrow.parquet as pqmod

    images = [png_bytes((i * 40, 0, 0)) for i in range(6)]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if layout == "struct":
        cells = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)]
        cells[2] = None  # a text-only row
        kind = struct
    elif layout == "list":
        cells = [[{"bytes": b, "path": None}] for b in images]
        cells[2], cells[4] = [], None
        kind = pa.list_(struct)
    else:
        cells, kind = list(images), pa.binary()
        cells[2] = None
    turns = [[{"from": "human", "value": ("<image>\n" if cells[i] else "") + f"Q{i}"}, {"from": "gpt", "value": "A"}]
             for i in range(6)]
    table = pa.table({"id": [str(i) for i in range(6)], "image": pa.array(cells, type=kind), "conversations": turns})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    read = []
    real = pqmod.ParquetFile.iter_batches
    monkeypatch.setattr(pqmod.ParquetFile, "iter_batches",
                        lambda self, *a, **k: read.append(k.get("columns")) or real(self, *a, **k))
    records = list(read_records(tmp_path / "t.parquet"))
    expected = [[b] if cells[i] else [] for i, b in enumerate(images)]
    assert [[im.read() for im in r.images] for r in records] == expected
    lazy = layout != "binary"  # a plain binary column has no names to read instead
    assert all((c is not None and not any(name == "image" for name in c)) == lazy for c in read)
    if layout == "struct":
        assert [im.path for r in records for im in r.images] == ["0.png", "1.png", "3.png", "4.png", "5.png"]
        with pa.ipc.new_file(str(tmp_path / "t.arrow"), table.schema) as writer:
            writer.write_table(table)
        assert [[im.read() for im in r.images] for r in read_records(tmp_path / "t.arrow")] == expected
        cells[5] = {"bytes": None, "path": "images/5.png"}  # an image kept as a file name only
        pq.write_table(pa.table({"id": [str(i) for i in range(6)], "image": pa.array(cells, type=kind),
                                 "conversations": turns}), tmp_path / "u.parquet", row_group_size=4)
        read.clear()
        records = list(read_records(tmp_path / "u.parquet"))
        assert records[5].images == ["images/5.png"] and records[4].images[0].read() == images[4]
        assert read[1] is None  # that row group read whole; the first one without its bytes


def test_json_array_is_streamed_across_chunk_boundaries(tmp_path):
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": "q" * (i % 37)},
                                             {"from": "gpt", "value": "a"}]} for i in range(500)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, indent=2))
    assert [r for _, r in _iter_json_array(path, chunk_size=64)] == rows


@pytest.mark.parametrize("text, error", [
    ('[{"a": 1}, ]', r"row 2 \(line 1\): a comma after the last row"),
    ('[{"a": 1} {"a": 2}]', r"row 2 \(line 1\): no comma between row 1 and this one"),
    ('[, {"a": 1}]', r"row 1 \(line 1\): a comma with no row before it"),
    ('[{"a": 1},\n,{"a": 2}]', r"row 2 \(line 2\): a comma with no row before it"),
    ('[{"a": 1}]\n[{"a": 2}]', r"d.json: line 2: text after the list's closing"),
    ('[{"a": 1}]\n\n  \n', None),
    ('[{"a": 1}', r"not closed \(no '\]' after row 1\)"),
])
def test_json_array_is_as_strict_as_json_load(tmp_path, text, error):
    """json.load refuses each of these (white space after the list aside); a streamed read must too, naming where,
    not skip or merge rows."""
    path = tmp_path / "d.json"
    path.write_text(text)
    if error is None:  # white space after the list is fine
        assert [r for _, r in _iter_json_array(path, chunk_size=4)] == json.loads(text)
        return
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(DataError, match=error):
        list(_iter_json_array(path, chunk_size=4))


def test_a_bad_row_deep_in_a_json_array_is_named_without_reading_the_rest(tmp_path):
    """A broken row fails at once with its row and line; a string longer than a chunk still reads whole."""
    rows = [{"id": str(i), "text": "x" * (300 if i == 3 else 5)} for i in range(40)]
    lines = json.dumps(rows, indent=1).splitlines()  # row i opens on line 2 + 4 * i
    row_30 = 2 + 4 * 30
    lines[row_30] = lines[row_30].replace('"id"', "'id'")
    text = "\n".join(lines)
    path = CountingPath(tmp_path / "d.json")
    path.write_text(text)
    reader = _iter_json_array(path, chunk_size=64)
    assert [r for _, r in itertools.islice(reader, 30)] == rows[:30]
    with pytest.raises(DataError, match=rf"row 31 \(line {row_30 + 1}\): not valid JSON \(Expecting property"):
        next(reader)
    assert path.chars_read < text.index("'id'") + 2 * 64  # it did not read on to the end hoping the row would close


class CountingPath(type(pathlib.Path())):
    """A path whose open() counts the characters read through it."""
    chars_read = 0

    def open(self, *args, **kwargs):
        f = super().open(*args, **kwargs)
        read = f.read

        def counted(size=-1):
            text = read(size)
            self.chars_read += len(text)
            return text
        f.read = counted
        return f


def test_llava_benchmark_question_files(tmp_path):
    """llava/eval's question files (llava_textvqa_val_v051_ocr.jsonl, llava_pope_test.jsonl, llava_mme.jsonl): one
    question per row, asked as LLaVA's model_vqa_loader asks it, and its question_id kept for the answers file."""
    rows = [{"question_id": 34602, "image": "003a8ae2ef43b901.jpg", "text": "what is the brand?\nAnswer the "
             "question using a single word or phrase.", "category": "default"},
            {"question_id": "q2", "text": "Is the sky blue?"}]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = read_records(path)
    assert a.id == "34602" and a.images == ["003a8ae2ef43b901.jpg"]
    assert a.turns == [("user", "<image>\nwhat is the brand?\nAnswer the question using a single word or phrase.")]
    assert b.id == "q2" and b.images == [] and b.turns == [("user", "Is the sky blue?")]
    path.write_text(json.dumps({"question_id": 1, "text": ["not", "a", "string"]}) + "\n")
    with pytest.raises(DataError, match=r"questions.jsonl:1: 'text' must be the question"):
        list(read_records(path))


def test_question_answer_rows_of_the_hub_evaluation_sets(tmp_path):
    """The layout of lmms-lab's evaluation sets (parquet, image bytes inside): MME / POPE (question, answer,
    category), VQAv2 (answers with their confidence, multiple_choice_answer), TextVQA (answers as strings),
    MMBench (index, hint, options A-D, a letter), ScienceQA (choices, the index of the answer, an image or none), AI2D
    (options, the index as text), and a test split without answers. MMBench questions are built as LLaVA's model_vqa_mmbench builds them: the hint on its
    own line first (none when 'nan'), then one line per option up to the first missing one; ScienceQA's as lmms-eval's
    scienceqa task builds them ("Context: " + hint)."""
    image = {"bytes": png_bytes(), "path": None}
    rows = [
        {"question_id": "code_reasoning/0020.png", "question": "Is it 5? Please answer yes or no.", "answer": "Yes",
         "category": "code_reasoning", "image": image},
        {"question_id": 262148000, "question": "What is it?", "image": image, "multiple_choice_answer": "dog",
         "answers": [{"answer": "dog", "answer_confidence": "yes", "answer_id": 1}]},
        {"question_id": 7, "question": "what brand?", "image": image, "answers": ["nokia", "Nokia", "nokia", "lg"]},
        {"index": 241, "question": "Which colour?", "hint": "A shape on white.", "A": "red", "B": "blue", "C": "nan",
         "D": "green", "answer": "B", "image": image},
        {"index": 242, "question": "Which?", "hint": "nan", "A": "up", "B": "down", "C": None, "D": None,
         "answer": "A", "image": image},
        {"question_id": 9, "question": "Is the sky blue?", "image": image},
        {"question_id": "101669", "question": "How many?", "choice_a": "1", "choice_b": "2", "choice_c": "3",
         "choice_d": "4", "answer": "B", "image": image},  # SEED-Bench's columns
        {"question": "Which is a mammal?", "hint": "Mammals have fur.", "choices": ["frog", "cat", "eel"], "answer": 1,
         "image": image, "lecture": "...", "solution": "..."},  # ScienceQA's
        {"question": "Which word is longer?", "hint": "", "choices": ["sun", "planet"], "answer": 1, "image": None},
    ]
    for name, part in [("a_mme", rows[:1]), ("b_vqav2", rows[1:2]), ("c_textvqa", rows[2:3]), ("d_mmbench", rows[3:5]),
                       ("e_test", rows[5:6]), ("f_seed", rows[6:7]), ("g_sqa", rows[7:])]:  # a set of shards
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"{name}.parquet")
    mme, vqa, textvqa, mmb, mmb2, unanswered, seed, sqa, sqa_text = read_records(tmp_path)
    assert [r.id for r in read_records(tmp_path / "[bd]_*.parquet")] == [vqa.id, mmb.id, mmb2.id]  # some shards
    with pytest.raises(DataError, match=r"validation-\*.parquet: no file matches"):
        list(read_records(tmp_path / "validation-*.parquet"))
    for subject in ("Math", "Art"):  # MMMU's layout: a folder per subject, a file per split
        for split in ("validation", "test"):
            (tmp_path / subject).mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_pylist([{"question": f"{subject} {split}?"}]),
                           tmp_path / subject / f"{split}-00000-of-00001.parquet")
    assert [r.turns[0][1] for r in read_records(tmp_path / "*" / "validation-*.parquet")] == ["Art validation?",
                                                                                            "Math validation?"]
    (tmp_path / "qa [copy].jsonl").write_text(json.dumps({"question": "Is it?", "answer": "yes"}) + "\n")
    assert [r.turns for r in read_records(tmp_path / "qa [copy].jsonl")] == [[("user", "Is it?"), ("assistant", "yes")]]
    assert mme.id == "code_reasoning/0020.png" and [im.read() for im in mme.images] == [png_bytes()]
    assert mme.turns == [("user", "<image>\nIs it 5? Please answer yes or no."), ("assistant", "Yes")]
    assert extra_fields(mme) == {"question_id": "code_reasoning/0020.png", "category": "code_reasoning"}
    assert vqa.turns[1] == ("assistant", "dog") and textvqa.turns[1] == ("assistant", "nokia")
    assert mmb.id == "241" and mmb.turns == [
        ("user", "<image>\nA shape on white.\nWhich colour?\nA. red\nB. blue"), ("assistant", "B")]
    assert mmb2.turns[0] == ("user", "<image>\nWhich?\nA. up\nB. down")
    assert unanswered.turns == [("user", "<image>\nIs the sky blue?")]
    assert seed.turns == [("user", "<image>\nHow many?\nA. 1\nB. 2\nC. 3\nD. 4"), ("assistant", "B")]
    assert sqa.turns == [("user", "<image>\nContext: Mammals have fur.\nWhich is a mammal?\nA. frog\nB. cat\nC. eel"),
                         ("assistant", "B")]  # the right choice's index as its letter
    assert sqa_text.images == [] and sqa_text.turns == [("user", "Which word is longer?\nA. sun\nB. planet"),
                                                         ("assistant", "B")]
    # AI2D's: "options" and the right one's index as text; asked as lmms-eval's ai2d task asks it (its options were
    # left out and the reference was "1" before)
    ai2d = {"question": "Which part is the leaf?", "options": ["root", "leaf", "stem"], "answer": "1", "image": image}
    pq.write_table(pa.Table.from_pylist([ai2d]), tmp_path / "ai2d.parquet")
    assert next(read_records(tmp_path / "ai2d.parquet")).turns == [
        ("user", "<image>\nWhich part is the leaf?\nA. root\nB. leaf\nC. stem"), ("assistant", "B")]
    pq.write_table(pa.Table.from_pylist([{"question": "What?", "answer": "x", "img": image}]), tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f.parquet:1: column 'img' holds images, .* ds.rename_column\('img', 'image'\)"):
        list(read_records(tmp_path / "f.parquet"))


def test_mmbench_tables(tmp_path):
    """LLaVA's MMBench eval reads a .tsv (mmbench_dev_20230712.tsv): images as base64 text, empty cells for the
    options a question does not have; "index" stays a number, which its submission script matches answers by."""
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tsplit"
    image = base64.b64encode(png_bytes()).decode()
    lines = [header, f"241\tWhich colour?\tA shape on white.\tred\tblue\t\t\tB\tattribute\t{image}\tx\ty\tdev",
             f"242\t\"Which one, \"\"this\"\"?\"\tnan\tup\tdown\tleft\t\tC\tspatial\t{image}\tx\ty\tdev"]
    (tmp_path / "mmbench_dev.tsv").write_text("\n".join(lines) + "\n")
    first, second = read_records(tmp_path / "mmbench_dev.tsv")
    assert first.id == "241" and first.raw["index"] == 241 and first.images == [png_bytes()]
    assert first.turns == [("user", "<image>\nA shape on white.\nWhich colour?\nA. red\nB. blue"), ("assistant", "B")]
    assert second.turns[0] == ("user", '<image>\nWhich one, "this"?\nA. up\nB. down\nC. left')
    (tmp_path / "text.tsv").write_text(header + "\n1\tq\t\ta\tb\t\t\tA\tc\t\tx\ty\tdev\n")
    assert next(read_records(tmp_path / "text.tsv")).turns == [("user", "q\nA. a\nB. b"), ("assistant", "A")]
    (tmp_path / "bad.tsv").write_text(header + "\n1\tq\t\ta\tb\t\t\tA\tc\tnot base64!\tx\ty\tdev\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: 'image' is not base64 text"):
        list(read_records(tmp_path / "bad.tsv"))


def test_bad_rows_name_file_and_row(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
                                {"conversations": [{"from": "robot", "value": "Q"}]}]))
    with pytest.raises(DataError, match=r"bad.json:2: turn 0 has unknown role 'robot'"):
        list(read_records(path))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"conversations": []}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON"):
        list(iter_rows(broken))
