"""The terminal conversation: images attached to the next message, history kept until /reset, answers streamed
as the Python API gives them, and a word when an answer ran into max_new_tokens."""

from __future__ import annotations

import functools
import http.server
import io
import threading

import pytest
from PIL import Image

import llavatune
from llavatune.chat import ChatConfig, main


def test_a_conversation_with_an_image_a_reset_and_a_cut_answer(tiny_model_dir, shapes_data):
    image = shapes_data / "images" / "shape_00000.png"
    typed = f"/image {image}\nWhat colour is the shape?\n/reset\nHi\n/quit\nnever read\n"
    out = io.StringIO()
    main(ChatConfig(model=tiny_model_dir, max_new_tokens=3), stdin=io.StringIO(typed), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("chatting with") and lines[1] == "(image attached to your next message)"
    assert lines[3] == "(conversation reset)" and len(lines) == 5  # /quit ends it

    model = llavatune.load(tiny_model_dir, device="cpu")
    expected = [model.answers(["<image>\nWhat colour is the shape?"], [[Image.open(image)]], max_new_tokens=3)[0],
                model.answers(["Hi"], max_new_tokens=3)[0]]  # after /reset: no history, no image
    note = " [cut at max_new_tokens=3: --max-new-tokens N for longer answers]"
    for line, answer in zip((lines[2], lines[4]), expected):
        shown = line.removesuffix(note)
        assert (shown != line) == (answer.finish_reason == "length") and shown.strip() == answer.text
    assert any(a.finish_reason == "length" for a in expected)  # the random tiny model runs on: the note shows


def test_a_mistyped_command_or_path_is_said_and_the_conversation_goes_on(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    typed = f"/image {tmp_path / 'nope.png'}\n/image {broken}\n/help\n/image\nHi\n/quit\n"
    out = io.StringIO()
    main(ChatConfig(model=tiny_model_dir, max_new_tokens=2), stdin=io.StringIO(typed), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1] == f"({tmp_path / 'nope.png'}: no such image file. Nothing attached.)"
    assert lines[2].startswith(f"({broken}: image 'broken.png' cannot be decoded") and "Nothing attached" in lines[2]
    assert lines[3] == lines[4] == "(commands: /image PATH or URL, /reset, /quit)"
    assert len(lines) == 6  # "Hi" was answered, without an image


@pytest.fixture
def web(shapes_data):
    """http://127.0.0.1:PORT/ serving the shapes folder (no network needed), quietly."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(shapes_data)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_by_url_is_read_as_its_file(tiny_model_dir, shapes_data, web):
    """LLaVA's own cli takes --image-file https://...; so do --image and /image. A URL that fails is said."""
    typed = f"/image {web}/images/shape_00000.png\nWhat colour?\n/image {web}/images/gone.png\n/quit\n"
    out = io.StringIO()
    main(ChatConfig(model=tiny_model_dir, max_new_tokens=3), stdin=io.StringIO(typed), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[1] == "(image attached to your next message)"
    assert lines[3] == f"({web}/images/gone.png: cannot be downloaded (HTTP 404 File not found). Nothing attached.)"
    by_file, by_url = io.StringIO(), io.StringIO()
    for image, sink in ((str(shapes_data / "images/shape_00000.png"), by_file),
                        (f"{web}/images/shape_00000.png", by_url)):
        main(ChatConfig(model=tiny_model_dir, image=image, prompt="What colour?", max_new_tokens=3), stdout=sink)
    assert by_url.getvalue() == by_file.getvalue() and lines[2].startswith(by_file.getvalue().split(" [")[0].strip())
