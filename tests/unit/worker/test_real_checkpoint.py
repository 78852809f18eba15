"""A Hugging Face-layout Llama checkpoint (real tokenizer.json, chat template, generation config) served by the
real `infleet-worker serve` process answers the official `openai` SDK with the reference greedy tokens of the
templated prompt; unsupported checkpoints and missing tokenizer support are refused with clear messages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("openai")

import openai
import torch

from infleet_devcluster.ports import free_port
from infleet_worker.chat_template import ChatTemplate, ChatTemplateError, load_chat_template
from infleet_worker.checkpoint import load_checkpoint
from infleet_worker.config import UnsupportedModelError
from infleet_worker.devices import resolve_device
from infleet_worker.loader import load_model
from infleet_worker.tokenizer import HFTokenizer, TokenizerError, load_tokenizer
from tests.unit.worker.processes import wait_ready

from .hf_checkpoint import TinyCheckpoint, build_checkpoint, reference_greedy, reference_prompt_ids

ADMIN_TOKEN = "test-admin-token"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-llama-chat")


@pytest.fixture(scope="module")
def worker_url(checkpoint: TinyCheckpoint) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infleet_worker.cli", "serve", "--model", str(checkpoint.path), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), "--max-seq-len", "256", "--num-slots", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "INFLEET_WORKER_ADMIN_TOKEN": ADMIN_TOKEN})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, 90)
        yield base
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        log = out.decode()
        # The start-up log names the tokenizer and the template in use.
        assert "tokenizer: tokenizers (" in log and "chat template: Jinja chat template from" in log, log
        assert "admin API: bearer token from INFLEET_WORKER_ADMIN_TOKEN" in log, log


def test_openai_sdk_chat_gets_the_reference_greedy_tokens(checkpoint: TinyCheckpoint, worker_url: str) -> None:
    prompt_ids = reference_prompt_ids(checkpoint, MESSAGES)
    expected = reference_greedy(checkpoint, prompt_ids, 40)
    client = openai.OpenAI(base_url=worker_url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(model="tiny-llama-chat", messages=MESSAGES,  # type: ignore[arg-type]
                                          temperature=0, max_completion_tokens=40, logprobs=True)
    choice = resp.choices[0]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(prompt_ids)
    assert resp.usage.completion_tokens == len(expected)
    assert choice.message.content == checkpoint.tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if expected[-1] in checkpoint.eos_ids else "length")
    # Token by token, through the logprobs the worker reports for what it chose.
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [c.token for c in choice.logprobs.content] == [checkpoint.tokenizer.decode([t]) for t in expected]
    assert len(expected) >= 5  # the comparison covers real decoding steps, not one token


def test_the_process_takes_its_admin_token_from_the_environment(worker_url: str) -> None:
    def admin(headers: dict[str, str]) -> int:
        req = urllib.request.Request(worker_url + "/admin/state", json.dumps({"state": "warm"}).encode(),
                                     {"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert admin({}) == 401  # loopback is no exemption once a token is set
    assert admin({"Authorization": "Bearer nope"}) == 401
    assert admin({"Authorization": f"Bearer {ADMIN_TOKEN}"}) == 200
    assert admin({"Authorization": f"Bearer {ADMIN_TOKEN}"}) == 200  # idempotent
    req = urllib.request.Request(worker_url + "/admin/state", json.dumps({"state": "serving"}).encode(),
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read()) == {"state": "serving"}


def test_chat_without_a_token_limit_is_not_cut_at_16(checkpoint: TinyCheckpoint, worker_url: str) -> None:
    prompt_ids = reference_prompt_ids(checkpoint, MESSAGES)
    client = openai.OpenAI(base_url=worker_url + "/v1", api_key="unused", max_retries=0)
    # ignore_eos (an extension) makes the answer run to the context limit, as a model that never says EOS would.
    resp = client.chat.completions.create(model="tiny-llama-chat", messages=MESSAGES,  # type: ignore[arg-type]
                                          temperature=0, extra_body={"ignore_eos": True})
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 256 - len(prompt_ids)  # the whole context, not 16
    assert resp.choices[0].finish_reason == "length"


def test_completions_add_bos_through_the_tokenizer(checkpoint: TinyCheckpoint, worker_url: str) -> None:
    client = openai.OpenAI(base_url=worker_url + "/v1", api_key="unused", max_retries=0)
    text = "The quick brown fox"
    ids = list(checkpoint.tokenizer.encode(text).ids)
    assert ids[0] == checkpoint.bos_id
    expected = reference_greedy(checkpoint, ids, 8)
    resp = client.completions.create(model="tiny-llama-chat", prompt=text, max_tokens=8, temperature=0)
    assert resp.usage is not None and resp.usage.prompt_tokens == len(ids)
    assert resp.choices[0].text == checkpoint.tokenizer.decode(expected, skip_special_tokens=True)


def test_loader_reads_eos_from_generation_config_and_logs_its_choices(checkpoint: TinyCheckpoint,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        loaded = load_model(str(checkpoint.path), resolve_device("cpu"))
    assert isinstance(loaded.tokenizer, HFTokenizer)
    assert set(loaded.tokenizer.eos_ids) == set(checkpoint.eos_ids)
    assert isinstance(loaded.chat_template, ChatTemplate)
    assert "tokenizer_config.json" in caplog.text and "tokenizers (" in caplog.text


def test_template_variants_and_template_errors(checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    cfg = json.loads((checkpoint.path / "tokenizer_config.json").read_text())
    # A list of named templates: `default` is used.
    cfg["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ bos_token }}"
                            "{% for m in messages %}{% if m.role == 'user' and loop.index0 % 2 == 0 %}"
                            "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
                            "{{ m.content }}{% endfor %}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    template = load_chat_template(tmp_path)
    assert template.render([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]).text == \
        "<|begin_of_text|>ab"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "b"}])
    # A template in its own file (newer transformers) is found too.
    del cfg["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "x"}]).text == "[x]"
    # A sandboxed template cannot reach Python internals.
    (tmp_path / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="is unsafe"):
        load_chat_template(tmp_path).render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"},
         "GemmaForCausalLM"),
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "Qwen2ForCausalLM"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not implemented"),
        ({"attention_bias": True}, "biases"),
        ({"quantization_config": {"quant_method": "awq"}}, "awq"),
    ],
)
def test_unsupported_checkpoints_are_refused(checkpoint: TinyCheckpoint, tmp_path: Path,
                                             override: dict[str, object], message: str) -> None:
    for f in checkpoint.path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, **override}))
    with pytest.raises(UnsupportedModelError, match=message):
        load_checkpoint(tmp_path, torch.device("cpu"), torch.float32)


def test_tokenizer_json_without_the_package_is_an_error(checkpoint: TinyCheckpoint,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    with pytest.raises(TokenizerError, match="'tokenizers' package is not installed"):
        load_tokenizer(checkpoint.path, None, ())


def test_sentencepiece_only_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="SentencePiece"):
        load_tokenizer(tmp_path, None, ())
