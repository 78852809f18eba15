"""OpenAI semantics through the official `openai` SDK against the real aiohttp app on a loopback socket: model
names, token limits, seed, stop lists, logprobs, penalties and logit_bias, content parts and the developer role,
refused parameters, error bodies in OpenAI's shape and finish reasons from OpenAI's set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("openai")

import openai
import torch

from infleet_worker.engine import Engine
from infleet_worker.sampling import RowOptions, sample_row

from .test_server import run, serving


@asynccontextmanager
async def sdk(engine: Engine, **kwargs: Any) -> AsyncIterator[tuple[openai.AsyncOpenAI, Any]]:
    async with serving(engine, **kwargs) as (client, server):
        base = str(client.make_url("/v1"))
        api = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)
        try:
            yield api, (client, server)
        finally:
            await api.close()


USER = [{"role": "user", "content": "Say something"}]


def test_unknown_model_is_404_model_not_found(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            with pytest.raises(openai.NotFoundError) as exc:
                await api.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
            assert exc.value.code == "model_not_found" and exc.value.param == "model"
            assert "gpt-4o" in exc.value.message
            ok = await api.completions.create(model="tiny", prompt="x", max_tokens=2)
            assert ok.model == "tiny"

    run(go())


def test_token_limits_and_stop_lists(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            extra = {"ignore_eos": True}
            r = await api.chat.completions.create(model="tiny", messages=USER, temperature=0,  # type: ignore[arg-type]
                                                  max_completion_tokens=7, extra_body=extra)
            assert r.usage is not None and r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
            # max_completion_tokens wins over the deprecated max_tokens.
            r = await api.chat.completions.create(model="tiny", messages=USER, temperature=0,  # type: ignore[arg-type]
                                                  max_completion_tokens=5, max_tokens=9, extra_body=extra)
            assert r.usage is not None and r.usage.completion_tokens == 5
            # The legacy completions API keeps OpenAI's default of 16 tokens.
            c = await api.completions.create(model="tiny", prompt="Once", temperature=0, extra_body=extra)
            assert c.usage is not None and c.usage.completion_tokens == 16
            # Stop lists: the text ends before the first of the stop strings, finish_reason "stop".
            full = await api.completions.create(model="tiny", prompt="Once", max_tokens=40, temperature=0,
                                                extra_body=extra)
            text = full.choices[0].text
            visible = [i for i, ch in enumerate(text) if ch.isprintable() and ch != "\ufffd" and i > 3]
            assert visible, text
            cut = visible[0]
            stop = text[cut : cut + 1]
            s = await api.completions.create(model="tiny", prompt="Once", max_tokens=40, temperature=0,
                                             stop=["never-in-output", stop], extra_body=extra)
            assert s.choices[0].text == text[: text.index(stop)]
            assert s.choices[0].finish_reason == "stop"

    run(go())


def test_seed_makes_sampling_reproducible(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            async def sample(seed: int) -> str:
                r = await api.completions.create(model="tiny", prompt="Once", max_tokens=30, temperature=1.5,
                                                 seed=seed, extra_body={"ignore_eos": True})
                return r.choices[0].text

            first = await sample(7)
            # Same seed, concurrent with other traffic: same text.
            again, other, _noise = await asyncio.gather(sample(7), sample(8), api.completions.create(
                model="tiny", prompt="noise", max_tokens=30, temperature=1.0))
            assert again == first
            assert other != first

    run(go())


def test_logprobs_chat_and_completions(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            r = await api.chat.completions.create(model="tiny", messages=USER, temperature=0,  # type: ignore[arg-type]
                                                  max_completion_tokens=6, logprobs=True, top_logprobs=3,
                                                  extra_body={"ignore_eos": True})
            lp = r.choices[0].logprobs
            assert lp is not None and lp.content is not None and len(lp.content) == 6
            for item in lp.content:
                assert len(item.top_logprobs) == 3
                # Greedy: the chosen token is the most likely one, and its logprob is the top one.
                assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
                assert item.logprob <= 0
                assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs),
                                                                        reverse=True)
            plain = await api.chat.completions.create(model="tiny", messages=USER,  # type: ignore[arg-type]
                                                      temperature=0, max_completion_tokens=6,
                                                      extra_body={"ignore_eos": True})
            assert plain.choices[0].logprobs is None
            assert plain.choices[0].message.content == r.choices[0].message.content
            c = await api.completions.create(model="tiny", prompt="Once", max_tokens=4, temperature=0, logprobs=2,
                                             extra_body={"ignore_eos": True})
            clp = c.choices[0].logprobs
            assert clp is not None and clp.tokens is not None and len(clp.tokens) == 4
            assert clp.top_logprobs is not None and all(len(t) <= 2 for t in clp.top_logprobs)
            # Streamed logprobs cover the same tokens.
            stream = await api.chat.completions.create(model="tiny", messages=USER,  # type: ignore[arg-type]
                                                       temperature=0, max_completion_tokens=6, logprobs=True,
                                                       stream=True, extra_body={"ignore_eos": True})
            streamed = [x.logprob async for chunk in stream for ch in chunk.choices
                        if ch.logprobs and ch.logprobs.content for x in ch.logprobs.content]
            assert streamed == pytest.approx([x.logprob for x in lp.content])

    run(go())


def test_logit_bias_and_penalties_change_sampling(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            r = await api.completions.create(model="tiny", prompt="x", max_tokens=5, temperature=0,
                                             logit_bias={"65": 100}, extra_body={"ignore_eos": True})
            assert r.choices[0].text == "AAAAA"  # byte 65 is "A"
            # "A" favoured by +3 (the tiny model's logits are within +-1): chosen first; once generated, the
            # penalties (2 + 2 x count) outweigh the bias and it never comes back.
            p = await api.completions.create(model="tiny", prompt="x", max_tokens=8, temperature=0,
                                             logit_bias={"65": 3}, presence_penalty=2.0, frequency_penalty=2.0,
                                             extra_body={"ignore_eos": True})
            assert p.choices[0].text.startswith("A") and p.choices[0].text.count("A") == 1

    run(go())


def test_penalty_and_bias_arithmetic() -> None:
    logits = torch.tensor([1.0, 0.9, 0.0, -1.0])
    opts: dict[str, Any] = {"temperature": 0.0, "top_p": 1.0, "logit_bias": (), "top_logprobs": None}
    gen = torch.Generator().manual_seed(0)

    def pick(out: list[int], **kw: Any) -> int:
        o = RowOptions(**{**opts, "presence_penalty": 0.0, "frequency_penalty": 0.0, **kw})
        return sample_row(logits, o, out, None, gen)[0]

    assert pick([]) == 0
    assert pick([0], presence_penalty=0.2) == 1  # 1.0 - 0.2 < 0.9
    assert pick([0], presence_penalty=0.05) == 0
    assert pick([0, 0], frequency_penalty=0.1) == 1  # 1.0 - 2 * 0.1 < 0.9
    assert pick([0, 0], frequency_penalty=0.04) == 0
    assert pick([], logit_bias=((3, 2.5),)) == 3  # -1 + 2.5 > 1
    token, lp = sample_row(logits, RowOptions(**{**opts, "presence_penalty": 1.0, "frequency_penalty": 0.0,
                                                 "top_logprobs": 2}), [0], None, gen)
    assert token == 1 and lp is not None
    # Logprobs are the model's own distribution, before the penalty.
    ref = torch.log_softmax(logits, -1)
    assert lp.logprob == pytest.approx(float(ref[1]))
    assert [t for t, _ in lp.top] == [0, 1]


def test_content_parts_and_developer_role(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            kw: dict[str, Any] = {"model": "tiny", "temperature": 0, "max_completion_tokens": 8,
                                  "extra_body": {"ignore_eos": True}}
            a = await api.chat.completions.create(messages=[  # type: ignore[list-item]
                {"role": "developer", "content": [{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}]},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}], **kw)
            b = await api.chat.completions.create(messages=[
                {"role": "system", "content": "be\nbrief"}, {"role": "user", "content": "hi"}], **kw)
            assert a.usage is not None and b.usage is not None
            assert a.usage.prompt_tokens == b.usage.prompt_tokens
            assert a.choices[0].message.content == b.choices[0].message.content
            with pytest.raises(openai.BadRequestError, match="only 'text' parts"):
                await api.chat.completions.create(messages=[{"role": "user", "content": [  # type: ignore[list-item]
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}], **kw)

    run(go())


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"n": 2}, "n"),
        ({"top_logprobs": 2}, None),  # needs logprobs: true
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"99999": 1}}, None),  # outside the vocabulary
    ],
)
def test_unsupported_or_bad_parameters_are_400_naming_them(make_engine: Callable[..., Engine],
                                                           extra: dict[str, Any], param: str | None) -> None:
    async def go() -> None:
        async with sdk(make_engine()) as (api, _):
            with pytest.raises(openai.BadRequestError) as exc:
                await api.chat.completions.create(model="tiny", messages=USER,  # type: ignore[arg-type]
                                                  max_completion_tokens=2, extra_body=extra)
            if param is not None:
                assert exc.value.param == param
            assert next(iter(extra)) in exc.value.message or "vocabulary" in exc.value.message

    run(go())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/nothing", b"{}", 404, "not_found"),
        ("GET", "/v1/completions", b"", 405, "method_not_allowed"),
        ("POST", "/v1/completions", b'{"prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}', 413, "request_too_large"),
        ("POST", "/v1/completions", b'{"prompt": "a\\ud800b"}', 400, "invalid_unicode"),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400,
         "invalid_unicode"),
    ],
)
def test_every_error_body_is_openai_json(make_engine: Callable[..., Engine], method: str, path: str, body: bytes,
                                         status: int, code: str) -> None:
    async def go() -> None:
        async with serving(make_engine()) as (client, _):
            r = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
            assert r.status == status
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == code and err["message"]

    run(go())


def test_aborted_requests_are_errors_not_finish_reasons(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with sdk(make_engine(max_seq_len=1024)) as (api, (_client, server)):
            engine = server.model.engine

            async def abort_when_running() -> None:
                while engine.num_running == 0:
                    await asyncio.sleep(0.005)
                engine.abort_all()

            long = {"ignore_eos": True}
            aborter = asyncio.ensure_future(abort_when_running())
            with pytest.raises(openai.InternalServerError) as exc:
                await api.completions.create(model="tiny", prompt="x", max_tokens=1000, extra_body=long)
            await aborter
            assert exc.value.status_code == 503 and exc.value.code == "request_aborted"
            stream = await api.chat.completions.create(model="tiny", messages=USER,  # type: ignore[arg-type]
                                                       max_completion_tokens=900, stream=True, extra_body=long)
            reasons: list[str] = []

            async def consume() -> None:
                async for chunk in stream:
                    reasons.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
                    if engine.num_running:
                        engine.abort_all()

            with pytest.raises(openai.APIError, match="aborted"):
                await consume()
            assert reasons == []

    run(go())
