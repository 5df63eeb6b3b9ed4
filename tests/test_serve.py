"""The server over real HTTP on loopback: the OpenAI API (plain, streamed, with images), every error case,
concurrency, the official openai client, and the page's endpoints."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from conftest import train_config
from llavatune.serve import ServeConfig, create_app, load_slots
from llavatune.train import main as train

KEY = "test-key"


def bomb_uri() -> str:
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(colour=(200, 30, 30), size=48) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny_model_dir, shapes_data, tmp_path_factory):
    import uvicorn

    run = tmp_path_factory.mktemp("serve") / "run"
    train(train_config(tiny_model_dir, shapes_data, run, "steps=20", "lora.targets=all"))
    cfg = ServeConfig(model=tiny_model_dir, adapter=run, api_key=KEY, max_image_mb=0.05,
                      data=shapes_data / "qa.json", images=shapes_data)
    app = create_app(cfg, load_slots(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def post(base, body, key=KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/v1/chat/completions", headers=headers, content=raw if raw is not None
                      else json.dumps(body), timeout=60)


def user(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}], "max_tokens": 5}


def test_models_and_health(server):
    assert httpx.get(f"{server}/health").json()["models"] == ["base", "finetuned"]
    data = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert [m["id"] for m in data] == ["base", "finetuned"]


def test_text_and_image_completions(server):
    text = post(server, {"model": "base", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
    assert text.status_code == 200 and text.json()["choices"][0]["message"]["role"] == "assistant"
    image = post(server, {"model": "finetuned", **user({"type": "image_url", "image_url": {"url": png_uri()}},
                                                       {"type": "text", "text": "What colour is the shape?"})})
    assert image.status_code == 200
    assert isinstance(image.json()["choices"][0]["message"]["content"], str)
    for reply, max_tokens in ((text.json(), 4), (image.json(), 5)):  # real counts, and a reason that fits them
        usage, finish = reply["usage"], reply["choices"][0]["finish_reason"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["completion_tokens"] == max_tokens if finish == "length" else finish == "stop"
    assert image.json()["usage"]["prompt_tokens"] - text.json()["usage"]["prompt_tokens"] >= 16  # image tokens too


def test_images_go_before_the_text_whatever_the_order_of_the_parts(tiny_model_dir):
    """OpenAI clients often send the text part first; LLaVA trained on "<image>\nquestion", which vLLM's server
    builds too. The prompt text is the same either way, and so are the answers (served below)."""
    from llavatune.serve import parse_messages

    cfg = ServeConfig(model=tiny_model_dir)
    image, text = {"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Colour?"}
    contents = [parse_messages(user(*parts), cfg)[0][0]["content"] for parts in ([image, text], [text, image])]
    assert contents == ["<image>\nColour?", "<image>\nColour?"]
    two = parse_messages(user(text, image, {"type": "text", "text": "One word."}, image), cfg)
    assert two[0][0]["content"] == "<image>\n<image>\nColour?One word." and len(two[1]) == 2  # as the template
    tagged = parse_messages(user({"type": "text", "text": "Look: <image> Colour?"}, image), cfg)
    assert tagged[0][0]["content"] == "Look: <image> Colour?"  # the text's own tag (the template moves it first)


def test_a_phone_photo_is_served_upright_as_training_reads_it(tmp_path):
    """A JPEG whose EXIF says 'rotate 90 degrees': training turns it upright; serving took it sideways before."""
    from llavatune.data.images import load
    from llavatune.serve import decode_image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "phone.jpg", exif=exif)
    uri = "data:image/jpeg;base64," + base64.b64encode((tmp_path / "phone.jpg").read_bytes()).decode()
    served, trained = decode_image(uri, ServeConfig(model=tmp_path)), load("phone.jpg", tmp_path, "f:1")
    assert served.size == trained.size == (20, 40) and served.tobytes() == trained.tobytes()


def test_a_remote_image_that_cannot_be_fetched_is_a_400_not_a_500(tmp_path):
    from llavatune.serve import ApiError, decode_image

    with socket.socket() as free:  # a port nobody listens on: the connection is refused
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}/x.png"
    with pytest.raises(ApiError) as err:
        decode_image(url, ServeConfig(model=tmp_path, allow_remote_images=True))
    assert err.value.status == 400 and err.value.message.startswith(f"{url}: cannot be downloaded (")


def test_text_first_is_answered_as_image_first(server):
    image, text = {"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Which shape?"}
    first, last = (post(server, {"model": "finetuned", **user(*parts)}).json() for parts in ([image, text],
                                                                                             [text, image]))
    assert first["choices"] == last["choices"] and first["usage"] == last["usage"]


def test_streaming_is_openai_sse(server):
    body = {"model": "finetuned", "stream": True, "stream_options": {"include_usage": True},
            **user({"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Which shape is it?"})}
    with httpx.stream("POST", f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      content=json.dumps(body), timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, last, usage = chunks  # include_usage: a last chunk with the counts and no choices
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
    plain = post(server, {k: v for k, v in body.items() if k not in ("stream", "stream_options")}).json()
    assert streamed.strip() == plain["choices"][0]["message"]["content"]
    assert last["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]


@pytest.mark.parametrize("case,status", [
    ("bad json", 400), ("no messages", 400), ("bad base64", 400), ("not an image", 400), ("too big", 413),
    ("too many pixels", 413),
    ("unknown model", 404), ("wrong key", 401), ("remote url", 400), ("file path", 400), ("max_tokens text", 400),
    ("negative max_tokens", 400), ("top_p above 1", 400), ("n above 1", 400)])
def test_errors_in_openai_shape(server, case, status):
    image = lambda url: user({"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"})  # noqa: E731
    requests = {
        "bad json": dict(raw=b"{not json"),
        "no messages": dict(body={"model": "base"}),
        "bad base64": dict(body=image("data:image/png;base64,@@@")),
        "not an image": dict(body=image("data:image/png;base64," + base64.b64encode(b"hello").decode())),
        "too big": dict(body=image(png_uri(size=400) + "A" * 80_000)),
        "too many pixels": dict(body=image(bomb_uri())),  # 27 KB of PNG, 225 million pixels
        "unknown model": dict(body={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        "wrong key": dict(body={"messages": [{"role": "user", "content": "hi"}]}, key="wrong"),
        "remote url": dict(body=image("https://example.com/cat.png")),
        "file path": dict(body=image("/etc/passwd")),
        "max_tokens text": dict(body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}),
        "negative max_tokens": dict(body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
        "top_p above 1": dict(body={"messages": [{"role": "user", "content": "hi"}], "top_p": 7}),
        "n above 1": dict(body={"messages": [{"role": "user", "content": "hi"}], "n": 3}),
    }
    kwargs = requests[case]
    response = post(server, kwargs.get("body"), key=kwargs.get("key", KEY), raw=kwargs.get("raw"))
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]
    named = {"max_tokens text": "max_tokens", "negative max_tokens": "max_tokens", "top_p above 1": "top_p",
             "n above 1": "n"}.get(case)
    if named:  # the field is named, where it once was a 500 from deep inside (or n silently ignored)
        assert error["param"] == named and f"'{named}'" in error["message"]


def test_two_concurrent_requests_are_both_answered(server):
    results = []

    def ask():
        results.append(post(server, {"model": "base", "messages": [{"role": "user", "content": "Hi"}],
                                     "max_tokens": 8}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]


def test_official_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    content = [{"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Colour?"}]
    reply = client.chat.completions.create(model="finetuned", messages=[{"role": "user", "content": content}],
                                           max_tokens=4, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert len(pieces) >= 2
    assert [m.id for m in client.models.list()] == ["base", "finetuned"]


def test_page_and_sample_endpoint(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "Dataset sample" in page.text and "Upload an image" in page.text
    sample = httpx.get(f"{server}/api/sample/0").json()
    assert sample["image"].startswith("data:image/png;base64,") and sample["question"] and sample["reference"]
    assert httpx.get(f"{server}/api/sample/100000").status_code == 404


def test_sample_tab_reads_its_dataset_once(tiny_model_dir, shapes_data, monkeypatch):
    """A 665K-row JSON takes seconds to parse: the page's sample requests must not each reread it."""
    from fastapi.testclient import TestClient

    from llavatune.data import formats

    calls, real = [], formats.read_records
    monkeypatch.setattr(formats, "read_records", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = ServeConfig(model=tiny_model_dir, data=shapes_data / "qa.json", images=shapes_data)
    client = TestClient(create_app(cfg, {"base": None}))
    first, second, again = (client.get(f"/api/sample/{i}").json() for i in (0, 1, 0))
    assert len(calls) == 1 and first == again != second
    missing = client.get("/api/sample/-1")
    assert missing.status_code == 404 and "0 to" in missing.json()["error"]["message"]


def test_a_sample_whose_image_is_gone_or_outside_is_said_not_a_500(tiny_model_dir, shapes_data, tmp_path):
    from fastapi.testclient import TestClient

    rows = json.loads((shapes_data / "qa.json").read_text())[:2]
    rows[0]["image"], rows[1]["image"] = "images/gone.png", "../../etc/passwd"
    (tmp_path / "d.json").write_text(json.dumps(rows))
    cfg = ServeConfig(model=tiny_model_dir, data=tmp_path / "d.json", images=shapes_data)
    client = TestClient(create_app(cfg, {"base": None}))
    gone, outside = client.get("/api/sample/0"), client.get("/api/sample/1")
    assert gone.status_code == outside.status_code == 404
    assert "not found under" in gone.json()["error"]["message"] and "passwd" in outside.json()["error"]["message"]


CHROMIUM = "/usr/bin/chromium"


def test_page_in_a_real_headless_browser(server, tmp_path):
    """Load the page, upload an image, ask: both models answer. (.ci/run installs Debian's chromium.)"""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    image = tmp_path / "shape.png"
    Image.new("RGB", (64, 64), (40, 80, 220)).save(image)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server)
        page.fill("#api_key", KEY)
        page.click("#tab-upload-btn")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('upload-image').src.startsWith('data:')")
        page.fill("#question", "What colour is the shape?")
        page.click("#ask")
        page.wait_for_function("document.querySelectorAll('#upload-answers .answer').length == 2 && "
                               "[...document.querySelectorAll('#upload-answers .text')].every(e => e.textContent != '…')",
                               timeout=60_000)
        answers = page.locator("#upload-answers .answer h3").all_inner_texts()
        texts = page.locator("#upload-answers .text").all_inner_texts()
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert answers == ["base", "finetuned"]
    assert all(not t.startswith("error") for t in texts)
    assert texts[0].endswith(" [cut at max new tokens]")  # the random base runs on to the page's 64 tokens


def test_the_key_may_come_from_the_environment_and_an_open_bind_without_one_warns(tiny_model_dir, monkeypatch, capsys):
    """A key given as --api-key shows in `ps` and the shell history; LLAVATUNE_API_KEY does not."""
    import uvicorn

    from llavatune.cli import run

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append((app, kw)))
    monkeypatch.setenv("LLAVATUNE_API_KEY", "from-env")
    with pytest.raises(SystemExit):
        run(["serve", str(tiny_model_dir), "--host", "0.0.0.0"])
    from fastapi.testclient import TestClient

    client = TestClient(apps[0][0])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    assert "without an API key" not in capsys.readouterr().err
    monkeypatch.delenv("LLAVATUNE_API_KEY")
    with pytest.raises(SystemExit):
        run(["serve", str(tiny_model_dir), "--host", "0.0.0.0"])
    assert "warning: serving on 0.0.0.0 without an API key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["serve", str(tiny_model_dir)])  # this machine only: no warning
    assert "without an API key" not in capsys.readouterr().err and apps[-1][1]["host"] == "127.0.0.1"


def test_a_taken_port_is_said_before_the_models_load(tiny_model_dir, monkeypatch):
    import socket

    from llavatune import serve
    from llavatune.errors import LlavatuneError

    monkeypatch.setattr(serve, "load_slots", lambda cfg: pytest.fail("loaded the models first"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LlavatuneError, match=f"cannot serve on 127.0.0.1:{port} .*give another --port"):
            serve.main(ServeConfig(model=tiny_model_dir, port=port))


def test_a_dataset_whose_images_cannot_be_found_is_said_before_the_models_load(tiny_model_dir, shapes_data,
                                                                               monkeypatch):
    from llavatune import serve
    from llavatune.errors import LlavatuneError

    monkeypatch.setattr(serve, "load_slots", lambda cfg: pytest.fail("loaded the models first"))
    data = shapes_data / "qa.json"
    with pytest.raises(LlavatuneError, match=r"qa.json:1: the sample names image .* --images=DIR names the folder"):
        serve.main(ServeConfig(model=tiny_model_dir, port=0, data=data))
    with pytest.raises(LlavatuneError, match=r"--images=\S*nowhere: no such folder"):
        serve.main(ServeConfig(model=tiny_model_dir, port=0, data=data, images=shapes_data / "nowhere"))
    with pytest.raises(LlavatuneError, match=r"\S*tiny-tuned: no such model"):  # the second model, a typo in its name
        serve.main(ServeConfig(model=tiny_model_dir, port=0, compare=tiny_model_dir.parent / "tiny-tuned"))
