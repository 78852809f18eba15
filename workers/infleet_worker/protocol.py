"""The OpenAI-compatible request bodies, validated with pydantic: a field of the wrong type, a value out of
range or an unsupported option is a 400 with a message naming it.

OpenAI parameters are either implemented or refused by name (`UNSUPPORTED`, `refused_parameter`): a client that
asks for tools or JSON mode must not get a plain-text answer that looks like success. Fields OpenAI does not
define are ignored (clients and proxies add their own).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ChatMessage", "ChatRequest", "CompletionRequest", "ValidationError", "describe_validation_error",
           "refused_parameter"]

# OpenAI request parameters this worker does not implement, with the value that means "not used".
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "suffix": (None, ""),
    "echo": (None, False),
    "best_of": (None, 1),
}


def refused_parameter(body: dict[str, Any]) -> str | None:
    """The first OpenAI parameter in `body` that asks for something this worker does not do, if any."""
    for name, unused in UNSUPPORTED.items():
        if name in body and not any(body[name] == u and type(body[name]) is type(u) for u in unused):
            return name
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        return "response_format"
    return None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # extension (vLLM's name): keep generating past EOS, for benchmarks

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return v

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def bias_tuple(self) -> tuple[tuple[int, float], ...]:
        return tuple(sorted((int(k), float(b)) for k, b in (self.logit_bias or {}).items()))


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("prompt must be a string or a list of exactly one string")
            v = v[0]
        if not v:
            raise ValueError("prompt is empty")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def top_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type")
                if kind != "text":
                    raise ValueError(f"content part {i} has type {kind!r}; only 'text' parts are supported")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {i} of type 'text' needs a string 'text'")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_tool_calls(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tool_calls"):
            raise ValueError("tool_calls in messages are not supported (this worker does not do tool calling)")
        return data

    def text(self) -> str:
        """Content parts are joined with newlines, as vLLM does for text-only models."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(p["text"]) for p in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as a chat template sees it: `developer` is the newer name of `system` (OpenAI treats
        them alike for models without a separate developer role, and checkpoints' templates know `system`)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs_pair(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` is the current name; `max_tokens` the deprecated one. Both: the newer wins."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """A message naming every bad field, and the first one's dotted path (OpenAI's `param`)."""
    parts, params = [], []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-"))
        params.append(loc or None)
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts), (params[0] if params else None)
