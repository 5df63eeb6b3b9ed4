"""Verb `serve`: one process with an OpenAI-compatible API and a web page comparing two models.

    llavatune serve models/tiny --compare models/tiny-tuned --data data/val.json --images data

- POST /v1/chat/completions (text and image_url parts as base64 data URIs; stream=true as server-sent events
  ending with `data: [DONE]`; temperature, top_p, max_tokens, stop, seed), GET /v1/models, GET /health;
- GET / : a page with two tabs: a dataset sample by index, or an uploaded image, answered by both models.
Binds 127.0.0.1 unless told otherwise, caps image sizes, asks for the API key when one is set, queues
requests so one model never runs two generations at once, and reads no file outside --images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import io
import json
import sys
import threading
import time
import uuid
import warnings
from importlib import resources
from pathlib import Path

try:  # the [serve] extra; a clear message when it is missing
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
except ImportError as err:  # pragma: no cover
    raise ImportError("llavatune serve needs the serve extra: pip install 'llavatune[serve]'") from err

from llavatune.data import images as imagelib
from llavatune.data.formats import IMAGE_TAG
from llavatune.errors import LlavatuneError
from llavatune.inference.generate import Answer
from llavatune.model import load as loadlib


@dataclasses.dataclass
class ServeConfig:
    model: Path
    compare: Path | None = None      # a second model (e.g. the fine-tuned one) for the side-by-side page
    adapter: Path | None = None      # or: MODEL with this LoRA run as the second model
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None       # when set, requests need `Authorization: Bearer KEY`
    max_image_mb: float = 10.0
    allow_remote_images: bool = False
    data: Path | None = None         # a dataset for the page's sample tab
    images: Path | None = None       # its image folder; the only folder the server reads images from
    load_4bit: bool = False
    template: str | None = None      # conversation template (default: each model's own)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Slot:
    """A loaded model and the lock that queues its generations."""
    name: str
    model: object
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def load_slots(cfg: ServeConfig) -> dict[str, Slot]:
    from llavatune.inference.api import load

    name = "base" if (cfg.compare or cfg.adapter) else Path(cfg.model).name
    first = Slot(name, load(cfg.model, load_4bit=cfg.load_4bit, template=cfg.template))
    slots = {first.name: first}
    if cfg.compare is not None or cfg.adapter is not None:
        second = load(cfg.compare or cfg.model, adapter=cfg.adapter, load_4bit=cfg.load_4bit, template=cfg.template)
        slots["finetuned"] = Slot("finetuned", second)
    return slots


def decode_image(url: str, cfg: ServeConfig):
    """A data URI (or, when allowed, an http(s) URL) -> RGB image, within the size cap."""
    from PIL import Image, UnidentifiedImageError

    limit = int(cfg.max_image_mb * 2**20)
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "image data URIs must be base64 encoded (data:image/png;base64,...)", param="image_url")
        if len(payload) * 3 // 4 > limit:
            raise ApiError(413, f"image larger than the {cfg.max_image_mb:g} MB limit", param="image_url")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image_url holds invalid base64", param="image_url") from None
    elif url.startswith(("http://", "https://")):
        if not cfg.allow_remote_images:
            raise ApiError(400, "remote image URLs are refused; send a base64 data URI, or start the server with "
                                "--allow-remote-images", param="image_url")
        try:
            raw = imagelib.fetch(url, limit)
        except LlavatuneError as err:
            raise ApiError(400, str(err), param="image_url") from None
    else:
        raise ApiError(400, "image_url must be a base64 data URI (file paths are never read)", param="image_url")
    if len(raw) > limit:
        raise ApiError(413, f"image larger than the {cfg.max_image_mb:g} MB limit", param="image_url")
    try:
        with warnings.catch_warnings():  # a few KB of PNG can decode to gigabytes: over PIL's pixel limit, refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return imagelib.rgb(io.BytesIO(raw))  # upright, as training read it
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ApiError(413, f"image has more than {Image.MAX_IMAGE_PIXELS:,} pixels", param="image_url") from None
    except (UnidentifiedImageError, OSError):
        raise ApiError(400, "image_url does not hold a decodable image", param="image_url") from None


def parse_messages(body: dict, cfg: ServeConfig) -> tuple[list[dict], list]:
    """OpenAI messages -> (messages with string contents and <image> tags, images)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param="messages")
        texts, n_images = [], 0
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                images.append(decode_image(url, cfg))
                n_images += 1
            else:
                raise ApiError(400, f"messages[{i}] has a part of unknown type {kind!r}", param="messages")
        # the images go first, whatever the order of the parts (clients often send the text first), as the
        # model's chat template renders parts: LLaVA trains on "<image>\nquestion", and vLLM prompts the same
        text = "".join(texts)
        missing = max(0, n_images - text.count(IMAGE_TAG))
        out.append({"role": msg["role"], "content": f"{IMAGE_TAG}\n" * missing + text})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must come from the user", param="messages")
    return out, images


def generation_args(body: dict) -> dict:
    """The sampling settings of a request, each checked (a 400 naming it, not a 500 from deep inside); greedy
    unless a temperature is given. One choice per request: n other than 1 is refused, not ignored."""
    if body.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: one choice per request", param="n")
    max_key = "max_completion_tokens" if body.get("max_tokens") is None else "max_tokens"
    args = {"max_new_tokens": _number(body, max_key, int, 1, None, 256),
            "temperature": _number(body, "temperature", float, 0, 2, 0.0),
            "top_p": _number(body, "top_p", float, 0, 1, 1.0)}
    stop = body.get("stop")
    if stop:
        args["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("seed") is not None:
        args["seed"] = _number(body, "seed", int, 0, None, 0)
    return args


def _number(body: dict, key: str, kind: type, low: float, high: float | None, default):
    value = body.get(key)
    if value is None:
        return default
    fits = isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is not 1
    fits = fits and (kind is float or float(value).is_integer()) and value >= low and (high is None or value <= high)
    if not fits:
        where = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ApiError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'} {where}, got {value!r}",
                       param=key)
    return kind(value)


def create_app(cfg: ServeConfig, slots: dict[str, Slot]) -> FastAPI:
    app = FastAPI(title="llavatune", docs_url=None, redoc_url=None)
    default = next(iter(slots))

    @app.exception_handler(ApiError)
    async def api_error(_, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    def authorize(request: Request) -> None:
        if cfg.api_key and request.headers.get("authorization") != f"Bearer {cfg.api_key}":
            raise ApiError(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(slots)}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        now = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "llavatune"}
                                           for n in slots]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        authorize(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        name = body.get("model") or default
        if name not in slots:
            raise ApiError(404, f"model '{name}' not found; available: {', '.join(slots)}", param="model",
                           code="model_not_found")
        messages, images = parse_messages(body, cfg)
        args = generation_args(body)
        slot = slots[name]
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_sse(slot, messages, images, args, usage), media_type="text/event-stream")
        answer = await asyncio.to_thread(_locked, slot, lambda: slot.model.answers([messages], [images], **args)[0])
        return _completion(name, answer)

    samples = Samples(cfg)

    @app.get("/api/sample/{index}")
    async def sample(index: int):
        return samples.get(index)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (resources.files("llavatune") / "web" / "index.html").read_text()

    return app


def _locked(slot: Slot, fn):
    with slot.lock:  # one generation at a time per model; others wait their turn
        return fn()


def _completion(name: str, answer: Answer) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                        "finish_reason": answer.finish_reason}],
            "usage": _usage(answer)}


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


async def _sse(slot: Slot, messages, images, args, usage: bool):
    """OpenAI chunks: a role delta, content deltas, a finish chunk, with stream_options.include_usage a chunk
    with the token counts and no choices, then [DONE]."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict | None, finish=None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return "data: " + json.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                      "model": slot.name, "choices": choices, **extra}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stream = slot.model.stream(messages, images=images, **args)

    def produce():
        try:
            for piece in stream:
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.create_task(asyncio.to_thread(_locked, slot, produce))
    while (piece := await queue.get()) is not None:
        yield chunk({"content": piece})
    await task
    yield chunk({}, stream.answer.finish_reason)
    if usage:
        yield chunk(None, usage=_usage(stream.answer))
    yield "data: [DONE]\n\n"


class Samples:
    """The page's sample tab: rows of --data, read once on the first request, with their images from --images."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg

    @functools.cached_property
    def records(self):
        from llavatune.data.dataset import Packed
        from llavatune.data.formats import read_records

        return Packed(read_records(self.cfg.data))  # compact: a server may be pointed at a 665K-row file

    def get(self, index: int) -> dict:
        """Row `index`: its first image as a data URI, the first question, the reference answer."""

        if self.cfg.data is None:
            raise ApiError(404, "no dataset: start the server with --data FILE --images DIR")
        n = len(self.records)
        if not 0 <= index < n:
            raise ApiError(404, f"no sample {index} in {self.cfg.data} ({n} samples, 0 to {n - 1})")
        record = self.records[index]
        image_uri = None
        if record.images:
            try:
                img = imagelib.load(record.images[0], self.cfg.images, record.source)  # stays inside --images
            except LlavatuneError as err:  # missing, undecodable, or a path leaving --images: said, not a 500
                raise ApiError(404, str(err)) from None
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            image_uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        user = [t for r, t in record.turns if r == "user"]
        reference = record.turns[-1][1] if record.turns[-1][0] == "assistant" else ""
        return {"index": index, "image": image_uri,
                "question": user[0].replace("<image>", "").strip() if user else "", "reference": reference}


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
    except OSError as err:
        raise LlavatuneError(f"cannot serve on {host}:{port} ({err.strerror}): give another --port, or stop what "
                             "holds it.") from None


def main(cfg: ServeConfig) -> None:
    import uvicorn

    if not cfg.api_key and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host} without an API key: anyone who reaches this machine can use the "
              "models. Set LLAVATUNE_API_KEY (or --api-key).", file=sys.stderr)
    _check_port(cfg.host, cfg.port)  # before the models load, which may take minutes
    if cfg.data is not None:  # a sample tab that could show nothing is said at start
        imagelib.check_findable(cfg.data, cfg.images, "--images")
    for path in (cfg.model, cfg.compare, cfg.adapter):  # each is there before the first one loads
        if path is not None:
            loadlib.resolve(path)
    slots = load_slots(cfg)
    print(f"serving {', '.join(slots)} on http://{cfg.host}:{cfg.port}  (OpenAI API at /v1, page at /)")
    uvicorn.run(create_app(cfg, slots), host=cfg.host, port=cfg.port, log_level="warning")
