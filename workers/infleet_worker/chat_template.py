"""Chat templates: the checkpoint's own Jinja template, rendered the way transformers' `apply_chat_template` does.

The template comes from `tokenizer_config.json` (`chat_template`, a string or a list of named templates, where
`default` is used), `chat_template.jinja` or `chat_template.json`. It is rendered in Jinja's immutable sandbox
(a template is data from the checkpoint, not code we trust) with transformers' conventions: `trim_blocks`,
`lstrip_blocks`, loop controls, a `tojson` filter that keeps non-ASCII text, `raise_exception` and
`strftime_now`, the tokenizer's special tokens as variables and `add_generation_prompt=True`. The rendered text
already holds the special tokens the template wants (BOS included), so it is tokenized without adding more.

A checkpoint without a template, and the built-in models, use a plain role-tagged transcript
(`<|role|>\ncontent\n` ... `<|assistant|>\n`), tokenized with the tokenizer's own special tokens (BOS).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from infleet_worker.tokenizer import TokenizerError, read_json, special_token_text

log = logging.getLogger(__name__)

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The template refused the conversation (its own `raise_exception`, or a rendering error)."""


@dataclass(frozen=True, kw_only=True)
class RenderedPrompt:
    text: str
    add_special_tokens: bool  # False when the template wrote the special tokens into the text itself


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; serving renders the body."""

    tags = {"generation"}  # noqa: RUF012 - jinja's own class attribute

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A checkpoint's Jinja chat template with the tokenizer's special tokens bound."""

    def __init__(self, source: str, origin: str, special_tokens: dict[str, str]) -> None:
        try:
            self._template = compile_template(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TokenizerError(f"the chat template in {origin} does not compile: {exc}") from exc
        self.origin = origin
        self.special_tokens = special_tokens
        self.description = f"Jinja chat template from {origin}"

    def render(self, messages: Sequence[dict[str, Any]]) -> RenderedPrompt:
        try:
            text = self._template.render(messages=list(messages), add_generation_prompt=True, tools=None,
                                         documents=None, **self.special_tokens)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed on these messages: {exc}") from exc
        return RenderedPrompt(text=text, add_special_tokens=False)


class TranscriptTemplate:
    """The fallback for models without a template: role-tagged turns, then the assistant's."""

    description = "role-tagged transcript (<|role|>\\ncontent\\n ... <|assistant|>\\n); the model has no chat template"

    def render(self, messages: Sequence[dict[str, Any]]) -> RenderedPrompt:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return RenderedPrompt(text=turns + "<|assistant|>\n", add_special_tokens=True)


ChatFormatter = ChatTemplate | TranscriptTemplate


def _template_source(checkpoint: Path, tok_cfg: dict[str, Any]) -> tuple[str, str] | None:
    raw = tok_cfg.get("chat_template")
    if isinstance(raw, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        raw = named.get("default")
    if isinstance(raw, str) and raw:
        return raw, str(checkpoint / "tokenizer_config.json")
    jinja_file = checkpoint / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(), str(jinja_file)
    json_file = checkpoint / "chat_template.json"
    inner = read_json(json_file).get("chat_template")
    if isinstance(inner, str) and inner:
        return inner, str(json_file)
    return None


def load_chat_template(checkpoint: Path | None) -> ChatFormatter:
    if checkpoint is None:
        return TranscriptTemplate()
    tok_cfg = read_json(checkpoint / "tokenizer_config.json")
    found = _template_source(checkpoint, tok_cfg)
    if found is None:
        return TranscriptTemplate()
    source, origin = found
    special = {k: text for k in SPECIAL_TOKEN_KEYS if (text := special_token_text(tok_cfg.get(k))) is not None}
    return ChatTemplate(source, origin, special)
