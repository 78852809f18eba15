"""llama.cpp on the CPU tier, run for real: the operator renders a CPU pool's container for the `llama-cpp` engine,
and llama-cpp-python's server is started with exactly those arguments (only `--host` and `--port` moved to a
loopback address and a free port, as a pod's network namespace would make them safe) on a GGUF written offline from
the tiny checkpoint the worker tests build, F32 and Q8_0. The official `openai` SDK is the client, and the F32
model's greedy output is checked token for token against an independent full-sequence forward of the checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload, render_deployment
from infleet_devcluster.ports import free_port
from tests.integration.runtimes.gguf_checkpoint import Quant, write_gguf
from tests.unit.worker.hf_checkpoint import TinyCheckpoint, build_checkpoint, reference_greedy, reference_prompt_ids

pytest.importorskip("llama_cpp.server", reason="the llamacpp extra (pip install -e '.[llamacpp]') is not installed")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "default", "uid-1")
CPU_POOL = PoolRuntime(name="cpu", device="cpu", node_selector={"pool": "cpu"}, resource_name="cpu",
                       devices_per_replica=1, units_per_device=2, default_requests={"memory": "2Gi"})
MESSAGES = [{"role": "user", "content": "Hello!"}]


def rendered_container(gguf: Path) -> dict[str, Any]:
    """The container as the operator renders it for a CPU pool running llama-cpp."""
    w = Workload(OWNER, CPU_POOL, "serving", 1, "tiny", ContainerOverrides(engine="llama-cpp"), f"file://{gguf}")
    c: dict[str, Any] = render_deployment(w)["spec"]["template"]["spec"]["containers"][0]
    return c


def rendered_command(gguf: Path) -> list[str]:
    c = rendered_container(gguf)
    return [*c["command"], *c["args"]]


READINESS_PATH = rendered_container(Path("/m.gguf"))["readinessProbe"]["httpGet"]["path"]


def on_loopback(command: list[str], port: int, threads: int | None = None) -> list[str]:
    out = list(command)
    assert out[0] == "python3"
    out[0] = sys.executable
    moved = [("--host", "127.0.0.1"), ("--port", str(port))]
    if threads is not None:
        moved.append(("--n_threads", str(threads)))
    for flag, value in moved:
        out[out.index(flag) + 1] = value
    return out


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    command: list[str]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0, timeout=60,
                             http_client=httpx.Client(trust_env=False))


def start(gguf: Path, log: Path, threads: int | None = None) -> Server:
    port = free_port()
    command = on_loopback(rendered_command(gguf), port, threads)
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llama_cpp.server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            # The readiness probe the operator renders: the server binds only once the model is loaded.
            if httpx.get(f"{base}{READINESS_PATH}", timeout=1, trust_env=False).status_code == 200:
                return Server(process, base, command)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"llama_cpp.server not ready in 120s:\n{log.read_text()[-3000:]}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    return build_checkpoint(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="module", params=["F32", "Q8_0"])
def server(request: pytest.FixtureRequest, checkpoint: TinyCheckpoint,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Quant, Server]]:
    quant: Quant = request.param
    out = tmp_path_factory.mktemp(f"gguf-{quant}")
    gguf = write_gguf(checkpoint.path, out / f"tiny-{quant}.gguf", quant)
    s = start(gguf, out / "server.log")
    try:
        yield quant, s
    finally:
        stop(s)


def test_rendered_arguments_are_the_ones_the_server_runs_with(server: tuple[Quant, Server]) -> None:
    _, s = server
    assert s.command[1:3] == ["-m", "llama_cpp.server"]
    args = s.command[3:]
    assert args[args.index("--model") + 1].endswith(".gguf")
    assert args[args.index("--model_alias") + 1] == "tiny"
    assert args[args.index("--n_threads") + 1] == "2"  # one device of 2 vCPUs
    models = httpx.get(f"{s.base}/v1/models", trust_env=False).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_openai_chat_completion_matches_the_checkpoints_greedy_output(
    server: tuple[Quant, Server], checkpoint: TinyCheckpoint
) -> None:
    quant, s = server
    prompt = reference_prompt_ids(checkpoint, MESSAGES)
    expected = reference_greedy(checkpoint, prompt, 6)
    got = s.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert got.model == "tiny"
    assert got.usage is not None and got.usage.prompt_tokens == len(prompt)  # the chat template, applied alike
    content = got.choices[0].message.content or ""
    # A byte-level token that is half a UTF-8 character decodes to U+FFFD in `tokenizers` and to nothing in llama.cpp.
    text = checkpoint.tokenizer.decode(expected, skip_special_tokens=True).replace("\ufffd", "")
    if quant == "F32":
        assert got.usage.completion_tokens == len(expected)
        assert content == text
    else:  # Q8_0 weights: the first greedy token of this peaked model survives 8-bit rounding
        first = checkpoint.tokenizer.decode(expected[:1], skip_special_tokens=True).replace("\ufffd", "")
        assert content.startswith(first) and got.usage.completion_tokens == 6


def test_streaming_through_the_sdk(server: tuple[Quant, Server]) -> None:
    _, s = server
    chunks = list(s.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5,  # type: ignore[arg-type]
                                                     temperature=0, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sigterm_drains_the_request_in_flight(checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    """Drain on llama.cpp is SIGTERM: uvicorn stops accepting, finishes the request in flight, then exits (and
    re-raises the signal, so the status is -SIGTERM after a "Finished server process" line)."""
    log = tmp_path / "server.log"
    s = start(write_gguf(checkpoint.path, tmp_path / "t.gguf"), log)
    result: list[object] = []

    def ask() -> None:
        # End-of-text banned, so the request runs its full length: 2,000 tokens, nearly the rendered 2,048-token
        # context, so it is still running at SIGTERM on a fast machine (400 tokens finished inside the 0.5 s wait).
        # 2,000 tokens take over a minute on 2 loaded cores: a longer client timeout than the other tests'.
        result.append(s.client().with_options(timeout=300).completions.create(
            model="tiny", prompt="The quick brown fox", max_tokens=2000, temperature=0,
            logit_bias={str(t): -100 for t in checkpoint.eos_ids}))

    try:
        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.3)
        assert asker.is_alive(), "the request finished before SIGTERM: nothing was in flight"
        s.process.send_signal(signal.SIGTERM)
        asker.join(120)
        assert s.process.wait(30) == -signal.SIGTERM
    finally:
        stop(s)
    assert result, "the in-flight request failed"
    completion = result[0]
    assert completion.usage is not None and completion.usage.completion_tokens == 2000  # type: ignore[attr-defined]
    text = log.read_text()
    assert text.index("Shutting down") < text.index('"POST /v1/completions HTTP/1.1" 200') < text.index("Finished")


def test_probes_answer_at_once_and_leave_the_stream_in_flight_whole(checkpoint: TinyCheckpoint,
                                                                    tmp_path: Path) -> None:
    """The server generates behind one model lock. A probe of `/v1/models` queues on it (and, with the server's
    default `interrupt_requests`, ends the running stream early); the rendered probe path and the gateway's probe
    take no lock: probed every 50 ms while a 400-token stream runs, each answers within a second, and the stream
    still runs to its length."""
    import asyncio

    import aiohttp

    from infleet_gateway.probe import ANSWERED, Prober
    from infleet_gateway.replicas import EndpointTable

    # One thread: two OpenMP threads on two cores other jobs also use make a long stream take minutes here.
    s = start(write_gguf(checkpoint.path, tmp_path / "t.gguf"), tmp_path / "server.log", threads=1)
    chunks: list[str | None] = []  # each chunk's finish_reason
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            for chunk in s.client().completions.create(model="tiny", prompt="The quick brown fox", max_tokens=400,
                                                       temperature=0, stream=True,
                                                       logit_bias={str(t): -100 for t in checkpoint.eos_ids}):
                chunks.append(chunk.choices[0].finish_reason)
        except Exception as exc:  # a stream cut short: a broken connection
            failed.append(exc)

    async def probe_while(asker: threading.Thread) -> int:
        during = 0
        async with aiohttp.ClientSession() as session:
            prober = Prober(EndpointTable(), session, interval_s=1.0)
            while asker.is_alive():
                started = time.monotonic()
                page = await prober.probe(s.base, "llama-cpp")
                assert page == ANSWERED and time.monotonic() - started < 1.0
                async with session.get(f"{s.base}{READINESS_PATH}") as resp:
                    assert resp.status == 200
                during += asker.is_alive()
                await asyncio.sleep(0.05)
        return during

    try:
        asker = threading.Thread(target=ask)
        asker.start()
        deadline = time.monotonic() + 30
        while not chunks and not failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chunks, f"the stream did not start: {failed}"
        during = asyncio.run(probe_while(asker))
        asker.join()
    finally:
        stop(s)
    assert not failed, f"the stream broke: {failed}"
    # A stream cut short by a request on the lock ends with [DONE] and no finish_reason.
    assert "length" in chunks, "the stream did not run to its length"
    assert during >= 1, "the stream finished before any probe: nothing was in flight"
