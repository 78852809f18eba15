"""Continuous batching: batched results equal unbatched ones, stop conditions, admission control, aborts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("torch")

from infleet_worker.engine import (
    Engine,
    InvalidRequestError,
    RequestRejectedError,
    SamplingParams,
)

from .conftest import run_to_completion, text_of, tokens_of

GREEDY_20 = SamplingParams(max_tokens=20, ignore_eos=True)


def prompts(n: int) -> list[list[int]]:
    return [[(13 * i + 7 * j) % 256 for j in range(3 + 17 * i % 70)] for i in range(n)]


def test_batched_greedy_equals_one_at_a_time(make_engine: Callable[..., Engine]) -> None:
    ps = prompts(10)
    # More requests than slots (queueing, slot reuse, batch compaction) and a small token budget (chunked prefill).
    batched_engine = make_engine(num_slots=4, max_num_batched_tokens=24, min_prefill_chunk=8)
    batched = run_to_completion(batched_engine, ps, GREEDY_20)
    single_engine = make_engine(num_slots=1)
    single = [run_to_completion(single_engine, [p], GREEDY_20)[0] for p in ps]
    assert [tokens_of(b) for b in batched] == [tokens_of(s) for s in single]
    assert all(len(tokens_of(b)) == 20 and b[-1].finish_reason == "length" for b in batched)
    # The batch really was shared: fewer steps than running the requests back to back.
    assert batched_engine.steps < single_engine.steps / 2
    assert batched_engine.kv_usage == 0.0 and batched_engine.is_idle()


def test_requests_join_and_leave_between_steps(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=4)
    seen: list[int] = []
    short = engine.submit([1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True), lambda o: None)
    engine.submit([4, 5, 6], SamplingParams(max_tokens=30, ignore_eos=True), lambda o: None)
    assert short
    engine.step()  # both prefilled (first token) and decoded once (second token)
    seen.append(engine.num_running)
    engine.step()  # the short request finishes here and leaves the batch
    seen.append(engine.num_running)
    engine.submit([7, 8], SamplingParams(max_tokens=5, ignore_eos=True), lambda o: None)
    engine.step()  # ... and a new one joins while the long one keeps decoding
    seen.append(engine.num_running)
    assert seen == [2, 1, 2]


def test_stop_sequence_truncates_text(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    p = [72, 101, 108, 108, 111]
    full = run_to_completion(engine, [p], SamplingParams(max_tokens=40, ignore_eos=True))[0]
    text = text_of(full)
    # Pick a stop string from the middle of what greedy decoding produces, so it is certain to occur.
    printable = [i for i, c in enumerate(text) if c.isprintable() and c != "\ufffd"]
    assert len(printable) > 4, f"greedy output has too little text to test stops: {text!r}"
    cut = printable[len(printable) // 2]
    stop = text[cut]
    stopped = run_to_completion(engine, [p], SamplingParams(max_tokens=40, ignore_eos=True, stop=(stop,)))[0]
    assert text_of(stopped) == text[: text.index(stop)]
    assert stopped[-1].finish_reason == "stop"


def test_eos_ends_generation_unless_ignored(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    p = [1, 2, 3, 4]
    free = tokens_of(run_to_completion(engine, [p], GREEDY_20)[0])
    engine.tokenizer.eos_ids = (free[5],)  # pretend the sixth generated token is the end of sequence
    out = run_to_completion(engine, [p], SamplingParams(max_tokens=20))[0]
    first = free.index(free[5])
    assert tokens_of(out) == free[: first + 1]
    assert out[-1].finish_reason == "stop"
    assert tokens_of(run_to_completion(engine, [p], GREEDY_20)[0]) == free


def test_top_p_near_zero_is_greedy_and_sampling_is_seeded(make_engine: Callable[..., Engine]) -> None:
    p = [[9, 8, 7, 6]]
    greedy = tokens_of(run_to_completion(make_engine(), p, GREEDY_20)[0])
    nucleus = SamplingParams(max_tokens=20, temperature=1.5, top_p=1e-6, ignore_eos=True)
    assert tokens_of(run_to_completion(make_engine(), p, nucleus)[0]) == greedy
    hot = SamplingParams(max_tokens=20, temperature=2.0, ignore_eos=True)
    a = tokens_of(run_to_completion(make_engine(), p, hot)[0])
    b = tokens_of(run_to_completion(make_engine(), p, hot)[0])
    assert a == b  # same seed, same draws
    assert a != greedy


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], SamplingParams(), "prompt is empty"),
        ([1] * 250, SamplingParams(max_tokens=10), "over this worker's limit of 256"),
        ([1], SamplingParams(max_tokens=0), "max_tokens must be at least 1"),
        ([1], SamplingParams(temperature=-1), "temperature"),
        ([1], SamplingParams(top_p=0), "top_p"),
    ],
)
def test_invalid_requests_are_refused_with_a_reason(make_engine: Callable[..., Engine], prompt: list[int],
                                                    params: SamplingParams, message: str) -> None:
    engine = make_engine()
    with pytest.raises(InvalidRequestError, match=message):
        engine.submit(prompt, params, lambda o: None)
    assert engine.is_idle()


def test_full_queue_refuses_then_recovers(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=2, max_waiting=3)
    done: list[str] = []
    for _ in range(3):
        engine.submit([1, 2], SamplingParams(max_tokens=3, ignore_eos=True),
                      lambda o: done.append(o.request_id) if o.finished else None)
    with pytest.raises(RequestRejectedError) as exc:
        engine.submit([1, 2], SamplingParams(), lambda o: None)
    assert exc.value.reason == "queue_full" and exc.value.retry_after_s >= 1
    engine.step()  # two of three admitted: the KV cache (2 slots) is full, one waits
    assert (engine.num_running, engine.num_waiting) == (2, 1)
    # 2 prompt + 1 decoded tokens each, one block of 16 each, of a pool of 2 x 256 / 16 blocks.
    assert engine.kv_tokens_held == 6
    assert engine.kv_usage == 2 / 32
    while not engine.is_idle():
        engine.step()
    assert len(done) == 3
    engine.submit([1, 2], SamplingParams(max_tokens=1), lambda o: None)  # accepted again


def test_abort_frees_the_slot_and_reports_abort(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=2)
    events: list[str | None] = []
    rid = engine.submit([1, 2, 3], SamplingParams(max_tokens=100, ignore_eos=True),
                        lambda o: events.append(o.finish_reason))
    other = run_to_completion  # keep a second request running alongside
    engine.step()
    assert engine.kv_tokens_held == 4  # 3 prompt tokens + 1 decoded
    engine.abort(rid)
    engine.step()
    assert events[-1] == "abort" and engine.kv_usage == 0.0 and engine.is_idle()
    assert other(engine, [[5, 6]], SamplingParams(max_tokens=4, ignore_eos=True))[0][-1].finish_reason == "length"


def test_draining_engine_refuses_new_work(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.stop_admitting()
    with pytest.raises(RequestRejectedError) as exc:
        engine.submit([1], SamplingParams(), lambda o: None)
    assert exc.value.reason == "draining"


def test_engine_thread_serves_concurrent_submitters(make_engine: Callable[..., Engine]) -> None:
    import threading

    engine = make_engine(num_slots=4)
    engine.start()
    try:
        finished = threading.Event()
        results: dict[str, int] = {}

        def sink(o: object) -> None:
            from infleet_worker.engine import RequestOutput

            assert isinstance(o, RequestOutput)
            if o.finished:
                results[o.request_id] = o.completion_tokens
                if len(results) == 8:
                    finished.set()

        for i in range(8):
            engine.submit([i + 1, 2, 3], SamplingParams(max_tokens=6 + i, ignore_eos=True), sink)
        assert finished.wait(20)
        assert sorted(results.values()) == list(range(6, 14))
    finally:
        engine.shutdown()


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(make_engine: Callable[..., Engine],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    engine = make_engine(num_slots=4)
    real_decode = engine.runner.decode
    calls = {"n": 0}

    def flaky_decode(tokens: list[int], positions: list[int], tables: list[list[int]]) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated device fault")
        return real_decode(tokens, positions, tables)

    monkeypatch.setattr(engine.runner, "decode", flaky_decode)
    reasons: dict[str, str | None] = {}
    all_done = threading.Event()

    def sink(o: object) -> None:
        from infleet_worker.engine import RequestOutput

        assert isinstance(o, RequestOutput)
        if o.finished:
            reasons[o.request_id] = o.finish_reason
            if len(reasons) == 3:
                all_done.set()

    engine.start()
    try:
        for _ in range(2):
            engine.submit([1, 2, 3], SamplingParams(max_tokens=20, ignore_eos=True), sink)
        deadline = 0
        while len(reasons) < 2 and deadline < 500:
            deadline += 1
            threading.Event().wait(0.01)
        assert sorted(r or "" for r in reasons.values()) == ["error", "error"]
        assert engine.kv_usage == 0.0 and engine.is_alive()
        engine.submit([4, 5], SamplingParams(max_tokens=5, ignore_eos=True), sink)
        assert all_done.wait(10)
        assert sorted(r or "" for r in reasons.values()) == ["error", "error", "length"]
    finally:
        engine.shutdown()


def test_streamed_text_equals_decoding_all_tokens_at_once(make_engine: Callable[..., Engine]) -> None:
    from infleet_worker.tokenizer import ByteTokenizer

    # Hot sampling produces many partial UTF-8 sequences and out-of-vocabulary ids: incremental detokenization
    # must still add up to the one-shot decode.
    engine = make_engine(num_slots=4, max_seq_len=256)
    params = SamplingParams(max_tokens=150, temperature=1.5, ignore_eos=True)
    for events in run_to_completion(engine, [[i, 5, 6] for i in range(6)], params):
        assert text_of(events) == ByteTokenizer().decode(tokens_of(events))
