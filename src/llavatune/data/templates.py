"""Conversation templates, byte-identical to the LLaVA code base, plus the tokenizer's own (`hf`).

The reference is haotian-liu/LLaVA `llava/conversation.py` (`Conversation.get_prompt()`, the separator styles
SINGLE, TWO, MPT, LLAMA_2, PLAIN) and `llava/train/train.py` `preprocess_plain` for stage-1 captions. A
conversation here is a list of `(role, text)` turns with role in {system, user, assistant}; a leading system
turn replaces the template's default system prompt.

Each template also exports an equivalent Jinja chat template, so the saved processor's `apply_chat_template`
produces the very prompt the model was trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal

from llavatune.errors import LlavatuneError

Style = Literal["single", "two", "mpt", "llama_2", "plain", "hf"]
Turn = tuple[str, str]

_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAVA_LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. "
                        "You are able to understand the visual content that the user provides, "
                        "and assist the user with a variety of tasks using natural language.")
_MPT_SYSTEM = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
               "The assistant gives helpful and honest answers.")


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    style: Style
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = ""
    sep2: str | None = None

    @property
    def stop(self) -> str | None:
        """The text that ends an assistant turn (trained on, and a stop string at generation)."""
        return {"two": self.sep2, "mpt": self.sep, "single": self.sep, "llama_2": self.sep2}.get(self.style)


TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("plain", "plain", sep="\n"),
    Template("v0", "single", _LLAVA_V1_SYSTEM, ("Human", "Assistant"), "###"),
    Template("vicuna_v1", "two", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    Template("llava_v1", "two", _LLAVA_V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    Template("llava_llama_2", "llama_2", _LLAVA_LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>"),
    Template("mistral_instruct", "llama_2", "", ("USER", "ASSISTANT"), "", "</s>"),
    Template("chatml_direct", "mpt", "<|im_start|>system\nAnswer the questions.",
             ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    Template("mpt", "mpt", _MPT_SYSTEM, ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    Template("hf", "hf"),
]}
ALIASES = {"v1": "vicuna_v1", "llava_v0": "v0", "mistral_direct": "chatml_direct", "v0_plain": "plain"}


def get_template(name: str) -> Template:
    name = ALIASES.get(name, name)
    if name not in TEMPLATES:
        names = sorted([*TEMPLATES, *ALIASES])
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise LlavatuneError(f"unknown template '{name}'.{hint} Known templates: {', '.join(names)}.")
    return TEMPLATES[name]


def render(template: Template, turns: list[Turn], generation_prompt: bool = False, tokenizer=None) -> str:
    """The exact text LLaVA trains on for `turns`; with `generation_prompt`, the text that precedes the last
    assistant turn (that turn is dropped and the prompt ends where the model starts writing)."""
    system, turns = _split_system(template, turns)
    if generation_prompt:
        if not turns or turns[-1][0] != "assistant":
            raise LlavatuneError("a generation prompt needs a conversation that ends with an assistant turn.")
        turns = turns[:-1]
    if template.style == "hf":
        return _render_hf(tokenizer, system, turns, generation_prompt)
    messages: list[tuple[str, str | None]] = [(template.roles[_role_index(r)], text) for r, text in turns]
    if generation_prompt:
        messages.append((template.roles[1], None))
    if template.style == "plain":
        return _render_plain(template, turns, generation_prompt)
    return _STYLES[template.style](template, system, messages)


def _split_system(template: Template, turns: list[Turn]) -> tuple[str, list[Turn]]:
    if turns and turns[0][0] == "system":
        return turns[0][1], list(turns[1:])
    return template.system, list(turns)


def _role_index(role: str) -> int:
    if role not in ("user", "assistant"):
        raise LlavatuneError(f"role '{role}' cannot appear here: expected user or assistant "
                             "(a system turn is only allowed first).")
    return 0 if role == "user" else 1


def _single(t: Template, system: str, messages) -> str:
    out = system + t.sep
    for role, msg in messages:
        out += f"{role}: {msg}{t.sep}" if msg else f"{role}:"
    return out


def _two(t: Template, system: str, messages) -> str:
    seps = [t.sep, t.sep2]
    out = system + seps[0]
    for i, (role, msg) in enumerate(messages):
        out += f"{role}: {msg}{seps[i % 2]}" if msg else f"{role}:"
    return out


def _mpt(t: Template, system: str, messages) -> str:
    out = system + t.sep
    for role, msg in messages:
        out += f"{role}{msg}{t.sep}" if msg else role
    return out


def _llama_2(t: Template, system: str, messages) -> str:
    out = ""
    for i, (role, msg) in enumerate(messages):
        if i == 0 and (not msg or role != t.roles[0]):
            raise LlavatuneError("a llama_2-style conversation must start with a non-empty user turn.")
        if not msg:
            continue
        if i == 0 and system:
            msg = f"<<SYS>>\n{system}\n<</SYS>>\n\n{msg}"
        out += f"{t.sep}[INST] {msg} [/INST]" if i % 2 == 0 else f" {msg} {t.sep2}"
    return out.lstrip(t.sep) if t.sep else out


def _render_plain(t: Template, turns: list[Turn], generation_prompt: bool) -> str:
    """Stage-1 captions: LLaVA's preprocess_plain trains on '<image>' + caption + sep, dropping the prompt;
    generation follows get_prompt(): the user text, then sep."""
    if generation_prompt:
        return "".join(text + t.sep for role, text in turns if role == "user")
    if len(turns) != 2 or "<image>" not in turns[0][1]:
        raise LlavatuneError("the plain template takes exactly one user turn containing <image> and one "
                             "assistant caption (LLaVA stage-1 data).")
    return "<image>" + turns[1][1] + t.sep


def _render_hf(tokenizer, system: str, turns: list[Turn], generation_prompt: bool) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise LlavatuneError("template 'hf' uses the tokenizer's own chat template, and this tokenizer has "
                             "none. Pick a named template (for example vicuna_v1 or chatml_direct).")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": r, "content": text} for r, text in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


_STYLES = {"single": _single, "two": _two, "mpt": _mpt, "llama_2": _llama_2}


# Jinja equivalents for processor.apply_chat_template. Message content may be a string or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts; images render as "<image>\n" before the text, the
# way LLaVA data places them.
_CONTENT = (
    "{%- macro llavatune_text(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for p in m['content'] if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)
# The tokenizer's own template expects string contents: flatten image/text parts first.
_FLATTEN = ("{%- set ns = namespace(messages=[]) -%}{%- for m in messages -%}"
            "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': llavatune_text(m) | string}] -%}"
            "{%- endfor -%}{%- set messages = ns.messages -%}")
_SYSTEM = ("{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = llavatune_text(messages[0]) -%}"
           "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = DEFAULT -%}{%- set turns = messages -%}"
           "{%- endif -%}")


def to_jinja(template: Template, tokenizer=None) -> str | None:
    """A Jinja chat template that renders like `render()` (the `hf` style returns the tokenizer's own)."""
    if template.style == "hf":
        own = getattr(tokenizer, "chat_template", None)
        return _CONTENT + _FLATTEN + own if own else None
    q = _jinja_str
    u, a = template.roles
    if template.style == "plain":
        body = ("{%- for m in turns -%}{%- if m['role'] == 'user' -%}{{ llavatune_text(m) }}" + q(template.sep)
                + "{%- else -%}{{ llavatune_text(m) }}{%- endif -%}{%- endfor -%}")
    elif template.style == "single":
        body = ("{{ system }}" + q(template.sep) + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                + q(u + ": ") + "{%- else -%}" + q(a + ": ") + "{%- endif -%}{{ llavatune_text(m) }}" + q(template.sep)
                + "{%- endfor -%}{%- if add_generation_prompt -%}" + q(a + ":") + "{%- endif -%}")
    elif template.style == "two":
        body = ("{{ system }}" + q(template.sep) + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                + q(u + ": ") + "{{ llavatune_text(m) }}" + q(template.sep) + "{%- else -%}" + q(a + ": ")
                + "{{ llavatune_text(m) }}" + q(template.sep2) + "{%- endif -%}{%- endfor -%}"
                + "{%- if add_generation_prompt -%}" + q(a + ":") + "{%- endif -%}")
    elif template.style == "mpt":
        body = ("{{ system }}" + q(template.sep) + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                + q(u) + "{%- else -%}" + q(a) + "{%- endif -%}{{ llavatune_text(m) }}" + q(template.sep)
                + "{%- endfor -%}{%- if add_generation_prompt -%}" + q(a) + "{%- endif -%}")
    else:  # llama_2
        body = ("{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                "{%- if loop.first and system -%}{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + "
                "llavatune_text(m) -%}{%- else -%}{%- set text = llavatune_text(m) -%}{%- endif -%}"
                "{%- if not loop.first -%}" + q(template.sep) + "{%- endif -%}{{ '[INST] ' + text + ' [/INST]' }}"
                "{%- else -%}{{ ' ' + llavatune_text(m) + ' ' }}" + q(template.sep2) + "{%- endif -%}{%- endfor -%}")
    return _CONTENT + "{%- set DEFAULT = " + _jinja_literal(template.system) + " -%}" + _SYSTEM + body


def _jinja_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _jinja_str(text: str | None) -> str:
    return "{{ " + _jinja_literal(text or "") + " }}"
