"""Conversation templates, byte-identical to the code bases they come from, plus the tokenizer's own (`hf`).

References: haotian-liu/LLaVA `llava/conversation.py` (`Conversation.get_prompt()`, separator styles SINGLE,
TWO, MPT, LLAMA_2, PLAIN) with `llava/train/train.py` `preprocess_plain` for stage-1 captions, and InternLM/xtuner
`xtuner/utils/templates.py` (SYSTEM / INSTRUCTION / SUFFIX / SEP) for `internlm2_chat`, `qwen_chat`, `llama3_chat`.

A conversation is a list of `(role, text)` turns, role in {system, user, assistant}; a leading system turn
replaces the template's default system prompt. Rendering yields *segments* `(text, supervised)` whose
concatenation is the training text: supervised segments are the assistant replies with their end-of-turn
text, so labels are read off the same render the model sees (see `data/tokenize.py`).

Each template also exports an equivalent Jinja chat template, so a saved processor's `apply_chat_template`
builds the prompt the model was trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Literal

from llavatune.data.formats import IMAGE_TAG
from llavatune.errors import LlavatuneError

Style = Literal["single", "two", "mpt", "llama_2", "plain", "xtuner", "hf"]
Turn = tuple[str, str]
Segment = tuple[str, bool]  # (text, supervised)

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
    system: str = ""                  # default system prompt (xtuner: none unless the data gives one)
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = ""
    sep2: str | None = None
    system_format: str = ""           # xtuner SYSTEM, with {system}
    instruction: str = ""             # xtuner INSTRUCTION, with {input}
    suffix: str = ""                  # xtuner SUFFIX (ends an assistant turn)

    @property
    def stop(self) -> str | None:
        """The text that ends an assistant turn: supervised in training, a stop string in generation."""
        return {"two": self.sep2, "mpt": self.sep, "single": self.sep, "llama_2": self.sep2,
                "xtuner": self.suffix}.get(self.style) or None


def _xtuner(name: str, system_format: str, instruction: str, suffix: str, sep: str) -> Template:
    return Template(name, "xtuner", system_format=system_format, instruction=instruction, suffix=suffix, sep=sep)


TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("plain", "plain", sep="\n"),
    # LLaVA's conv_llava_v0. (Its "v0"/"default" is conv_vicuna_v0, which seeds an example exchange and trains
    # through a different preprocess; it is deliberately not offered.)
    Template("llava_v0", "single", _LLAVA_V1_SYSTEM, ("Human", "Assistant"), "###"),
    Template("vicuna_v1", "two", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    Template("llava_v1", "two", _LLAVA_V1_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    Template("llava_llama_2", "llama_2", _LLAVA_LLAMA2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>"),
    Template("mistral_instruct", "llama_2", "", ("USER", "ASSISTANT"), "", "</s>"),
    Template("chatml_direct", "mpt", "<|im_start|>system\nAnswer the questions.",
             ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    Template("mpt", "mpt", _MPT_SYSTEM, ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>"),
    _xtuner("internlm2_chat", "<|im_start|>system\n{system}<|im_end|>\n",
            "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>", "\n"),
    _xtuner("qwen_chat", "\n<|im_start|>system\n{system}<|im_end|>",
            "\n<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>", "\n"),
    _xtuner("llama3_chat", "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", ""),
    Template("hf", "hf"),
]}
ALIASES = {"v1": "vicuna_v1", "mistral_direct": "chatml_direct", "v0_plain": "plain"}


def get_template(name: str) -> Template:
    name = ALIASES.get(name, name)
    if name not in TEMPLATES:
        names = sorted([*TEMPLATES, *ALIASES])
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise LlavatuneError(f"unknown template '{name}'.{hint} Known templates: {', '.join(names)}.")
    return TEMPLATES[name]


def render(template: Template, turns: list[Turn], generation_prompt: bool = False, tokenizer=None) -> str:
    """The exact training text for `turns`; with `generation_prompt`, the text before the last assistant turn
    (that turn is dropped; the prompt ends where the model starts writing)."""
    return "".join(text for text, _ in segments(template, turns, generation_prompt, tokenizer))


def segments(template: Template, turns: list[Turn], generation_prompt: bool = False,
             tokenizer=None) -> list[Segment]:
    system, turns = _split_system(template, turns)
    turns = [(role, image_first(text)) for role, text in turns]
    for role, _ in turns:
        _role_index(role)
    if generation_prompt:
        if not turns or turns[-1][0] != "assistant":
            raise LlavatuneError("a generation prompt needs a conversation that ends with an assistant turn.")
        turns = turns[:-1]
    if template.style == "hf":
        return _hf(tokenizer, system, turns, generation_prompt)
    if template.style == "plain":
        return _plain(template, turns, generation_prompt)
    if template.style == "xtuner":
        return _xtuner_segments(template, system, turns)
    messages: list[tuple[str, str | None]] = [(template.roles[_role_index(r)], text) for r, text in turns]
    if generation_prompt:
        messages.append((template.roles[1], None))
    return _STYLES[template.style](template, system, messages)


def image_first(text: str) -> str:
    """LLaVA's preprocess_multimodal (and xtuner's llava_map_fn) before any template: a turn's <image> tag moves
    to its start, then a line break, then the rest stripped: "What is it?\n<image>" trains as "<image>\nWhat is
    it?" (many of LLaVA-Instruct's questions put the tag last). A turn with several tags (interleaved
    images, which LLaVA-1.5 does not train on) keeps them where they are."""
    if text.count(IMAGE_TAG) != 1:
        return text
    return (IMAGE_TAG + "\n" + text.replace(IMAGE_TAG, "").strip()).strip()


def _split_system(template: Template, turns: list[Turn]) -> tuple[str, list[Turn]]:
    if turns and turns[0][0] == "system":
        return turns[0][1], list(turns[1:])
    return template.system, list(turns)


def _role_index(role: str) -> int:
    if role not in ("user", "assistant"):
        raise LlavatuneError(f"role '{role}' cannot appear here: expected user or assistant "
                             "(a system turn is only allowed first).")
    return 0 if role == "user" else 1


# In get_prompt() an empty message (None or "") prints only the role; the index parity picks user/assistant.
def _single(t: Template, system: str, messages) -> list[Segment]:
    out = [(system + t.sep, False)]
    for i, (role, msg) in enumerate(messages):
        if not msg:
            out.append((f"{role}:", False))
        else:
            out += [(f"{role}: ", False), (msg + t.sep, i % 2 == 1)]
    return out


def _two(t: Template, system: str, messages) -> list[Segment]:
    seps = [t.sep, t.sep2]
    out = [(system + seps[0], False)]
    for i, (role, msg) in enumerate(messages):
        if not msg:
            out.append((f"{role}:", False))
        else:
            out += [(f"{role}: ", False), (msg + seps[i % 2], i % 2 == 1)]
    return out


def _mpt(t: Template, system: str, messages) -> list[Segment]:
    out = [(system + t.sep, False)]
    for i, (role, msg) in enumerate(messages):
        if not msg:
            out.append((role, False))
        else:
            out += [(role, False), (msg + t.sep, i % 2 == 1)]
    return out


def _llama_2(t: Template, system: str, messages) -> list[Segment]:
    out: list[Segment] = []
    for i, (role, msg) in enumerate(messages):
        if i == 0 and (not msg or role != t.roles[0]):
            raise LlavatuneError("a llama_2-style conversation must start with a non-empty user turn.")
        if not msg:
            continue
        if i == 0 and system:
            msg = f"<<SYS>>\n{system}\n<</SYS>>\n\n{msg}"
        if i % 2 == 0:
            out.append((("" if i == 0 else t.sep) + f"[INST] {msg} [/INST]", False))  # get_prompt lstrips sep
        else:
            out += [(" ", False), (f"{msg} {t.sep2}", True)]
    return out


def _plain(t: Template, turns: list[Turn], generation_prompt: bool) -> list[Segment]:
    """Stage-1 captions: preprocess_plain trains on '<image>' + caption + sep (the question is dropped);
    generation follows get_prompt(): the user text, then sep."""
    if generation_prompt:
        return [(text + t.sep, False) for role, text in turns if role == "user"]
    if len(turns) != 2 or turns[0][0] != "user" or "<image>" not in turns[0][1]:
        raise LlavatuneError("the plain template takes exactly one user turn containing <image> and one "
                             "assistant caption (LLaVA stage-1 data).")
    return [("<image>", False), (turns[1][1] + t.sep, True)]


def _xtuner_segments(t: Template, system: str, turns: list[Turn]) -> list[Segment]:
    """xtuner: per round, [SYSTEM (first round, when given)] + INSTRUCTION, then output + SUFFIX (supervised),
    then SEP between rounds (not after the last)."""
    out: list[Segment] = []
    pending_system = system
    for i, (role, text) in enumerate(turns):
        if role == "user":
            head = t.system_format.format(system=pending_system) if pending_system else ""
            out.append((head + t.instruction.format(input=text), False))
            pending_system = ""
        else:
            out.append((text + (t.suffix if text else ""), True))
            if i < len(turns) - 1:
                out.append((t.sep, False))
    return [s for s in out if s[0]]


def _hf(tokenizer, system: str, turns: list[Turn], generation_prompt: bool) -> list[Segment]:
    """The tokenizer's own template, rendered growing turn by turn: each assistant reply is what its render
    adds after the render of the turns before it with the generation prompt."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise LlavatuneError("template 'hf' uses the tokenizer's own chat template, and this tokenizer has "
                             "none. Pick a named template (for example vicuna_v1 or chatml_direct).")
    head = [{"role": "system", "content": system}] if system else []
    messages = head + [{"role": r, "content": text} for r, text in turns]

    def apply(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    out: list[Segment] = []
    done = ""
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt, full = apply(messages[:k], True), apply(messages[: k + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise LlavatuneError("this tokenizer's chat template rewrites earlier turns, so replies cannot be "
                                 "located for the loss; pick a named template instead of 'hf'.")
        reply = full[len(prompt):]
        body = reply.rstrip()
        out += [(prompt[len(done):], False), (body, True), (reply[len(body):], False)]
        done = full
    end = apply(messages, generation_prompt) if messages else ""
    out.append((end[len(done):], False))
    return [s for s in out if s[0]]


_STYLES = {"single": _single, "two": _two, "mpt": _mpt, "llama_2": _llama_2}


# --- Jinja equivalents for processor.apply_chat_template -------------------------------------------------
# Message content may be a string or a list of {"type": "image"} / {"type": "text"} parts; images render as
# "<image>\n" before the text, the way LLaVA data places them, and a string's one <image> tag moves there too
# (image_first).
_CONTENT = (
    "{%- macro llavatune_text(m) -%}{%- if m['content'] is string -%}"
    "{%- if m['role'] != 'system' and m['content'].count('<image>') == 1 -%}"
    "{{ ('<image>\\n' + m['content'].replace('<image>', '').strip()).strip() }}"
    "{%- else -%}{{ m['content'] }}{%- endif -%}{%- else -%}"
    "{%- for p in m['content'] if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}"
    "{%- endif -%}{%- endmacro -%}"
)
# The tokenizer's own template expects string contents: flatten image/text parts first.
_FLATTEN = ("{%- set ns = namespace(messages=[]) -%}{%- for m in messages -%}"
            "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': llavatune_text(m) | string}] -%}"
            "{%- endfor -%}{%- set messages = ns.messages -%}")
_SYSTEM = ("{%- if messages and messages[0]['role'] == 'system' -%}"
           "{%- set system = llavatune_text(messages[0]) -%}{%- set turns = messages[1:] -%}"
           "{%- else -%}{%- set system = DEFAULT -%}{%- set turns = messages -%}{%- endif -%}")


def to_jinja(template: Template, tokenizer=None) -> str | None:
    """A Jinja chat template that renders like `render()` (the `hf` style wraps the tokenizer's own)."""
    if template.style == "hf":
        own = getattr(tokenizer, "chat_template", None)
        return _CONTENT + _FLATTEN + own if own else None
    q = _jinja_str
    u, a = template.roles
    user_or_assistant = "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
    if template.style == "plain":
        body = user_or_assistant + "{{ llavatune_text(m) }}" + q(template.sep) + (
            "{%- else -%}{{ llavatune_text(m) }}{%- endif -%}{%- endfor -%}")
    elif template.style in ("single", "two"):
        user_end, asst_end = template.sep, template.sep2 if template.style == "two" else template.sep
        body = ("{{ system }}" + q(template.sep) + user_or_assistant + q(u + ": ") + "{{ llavatune_text(m) }}"
                + q(user_end) + "{%- else -%}" + q(a + ": ") + "{{ llavatune_text(m) }}" + q(asst_end)
                + "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}" + q(a + ":") + "{%- endif -%}")
    elif template.style == "mpt":
        body = ("{{ system }}" + q(template.sep) + user_or_assistant + q(u) + "{%- else -%}" + q(a)
                + "{%- endif -%}{{ llavatune_text(m) }}" + q(template.sep) + "{%- endfor -%}"
                + "{%- if add_generation_prompt -%}" + q(a) + "{%- endif -%}")
    elif template.style == "xtuner":
        head = _jinja_format(template.system_format, "system", "system")
        instruction = _jinja_format(template.instruction, "input", "llavatune_text(m)")
        body = (user_or_assistant + "{%- if loop.first and system -%}{{ " + head + " }}{%- endif -%}{{ "
                + instruction + " }}{%- else -%}{{ llavatune_text(m) }}" + q(template.suffix)
                + "{%- if not loop.last -%}" + q(template.sep) + "{%- endif -%}{%- endif -%}{%- endfor -%}")
    else:  # llama_2
        body = (user_or_assistant + "{%- if loop.first and system -%}"
                "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + llavatune_text(m) -%}"
                "{%- else -%}{%- set text = llavatune_text(m) -%}{%- endif -%}"
                "{%- if not loop.first -%}" + q(template.sep) + "{%- endif -%}{{ '[INST] ' + text + ' [/INST]' }}"
                "{%- else -%}{{ ' ' + llavatune_text(m) + ' ' }}" + q(template.sep2) + "{%- endif -%}{%- endfor -%}")
    return _CONTENT + "{%- set DEFAULT = " + _jinja_literal(template.system) + " -%}" + _SYSTEM + body


def _jinja_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _jinja_format(fmt: str, field: str, expr: str) -> str:
    """'a{field}b' -> a Jinja expression 'a' + expr + 'b'."""
    before, _, after = fmt.partition("{" + field + "}")
    return f"{_jinja_literal(before)} + {expr} + {_jinja_literal(after)}"


def _jinja_str(text: str | None) -> str:
    return "{{ " + _jinja_literal(text or "") + " }}"
