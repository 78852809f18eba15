"""The pure parts of the closed-loop scenarios: trace shaping, burst steps, p99 recovery, outcome classes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from closedloop.load import Shaping, TraceRow, read_trace, step_burst, thin, window
from closedloop.recovery import recovery_s, scale_up_s, windowed_p99
from closedloop.requests import Attempt, RequestLog
from closedloop.timeline import Timeline


def rows(rate: float, seconds: float) -> list[TraceRow]:
    n = int(rate * seconds)
    return [TraceRow(t_s=i / rate, context_tokens=100 + i % 700, generated_tokens=50 + i % 300) for i in range(n)]


def test_thin_keeps_the_fraction_evenly() -> None:
    kept = thin(100, 0.25)
    assert len(kept) == 25
    assert max(b - a for a, b in itertools.pairwise(kept)) == 4


def test_thin_refuses_to_invent_requests() -> None:
    with pytest.raises(ValueError, match="larger speedup"):
        thin(10, 1.5)


def test_window_compresses_thins_and_scales_tokens() -> None:
    trace = rows(rate=5.0, seconds=1000)  # 5 rps
    shaping = Shaping(start_s=100, duration_s=20, speedup=4, rps=3, token_divisor=16, max_prompt_words=48,
                      max_tokens=24)
    got = window(trace, shaping)
    assert len(got) == 60  # 80 trace seconds x 5 rps = 400 requests over 20 s, thinned to 3 rps
    assert got[0].at_s >= 0 and got[-1].at_s < 20
    assert all(4 <= a.prompt_words <= 48 and 4 <= a.max_tokens <= 24 for a in got)


def test_step_burst_triples_the_rate_only_inside_the_step() -> None:
    trace = rows(rate=5.0, seconds=2000)
    base = Shaping(start_s=0, duration_s=60, speedup=4, rps=2)
    got = step_burst(trace, base, 3.0, 15, 45)
    inside = sum(1 for a in got if 15 <= a.at_s < 45)
    outside = len(got) - inside
    assert inside == pytest.approx(3 * 2 * 30, abs=3)
    assert outside == pytest.approx(2 * 30, abs=3)
    assert [a.at_s for a in got] == sorted(a.at_s for a in got)


def test_read_trace_counts_seconds_from_the_first_request(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                   "2023-11-16 18:15:50.9951690,396,109\n")
    got = read_trace(csv)
    assert got[0].t_s == 0 and got[1].t_s == pytest.approx(4.314579, abs=1e-5)
    assert (got[1].context_tokens, got[1].generated_tokens) == (396, 109)


def test_recovery_is_the_end_of_the_last_window_over_the_slo() -> None:
    points = [(t / 10, 0.5) for t in range(0, 600)]  # 60 s at 10 rps, 0.5 s each
    points += [(t, 5.0) for t in (20.5, 21.0, 25.0, 27.9)]  # slow during the burst; last bad window [26, 28)
    assert recovery_s(points, burst_at_s=20, end_s=60, slo_s=2.0) == pytest.approx(8.0)


def test_recovery_is_zero_when_the_slo_held_and_none_when_never_back() -> None:
    fine = [(t / 10, 0.5) for t in range(0, 600)]
    assert recovery_s(fine, burst_at_s=20, end_s=60, slo_s=2.0) == 0.0
    never = [*fine, (59.0, math.inf)]
    assert recovery_s(never, burst_at_s=20, end_s=60, slo_s=2.0) is None


def test_windowed_p99_marks_empty_windows() -> None:
    assert windowed_p99([(0.5, 1.0), (4.5, 3.0)], end_s=6, window_s=2) == [1.0, None, 3.0]


def attempt(key: str, ok: bool, ttft: float | None = None, status: int | None = None) -> Attempt:
    return Attempt(key=key, target="gw", sent_at=0.0, ttft_s=ttft, latency_s=1.0 if ok else None, ok=ok,
                   status=status)


def test_outcome_classes_of_unanswered_keys() -> None:
    log = RequestLog()
    for key in "abcdef":
        log.keys.append(key)
    log.attempts += [attempt("a", True), attempt("b", False, status=502), attempt("c", False, status=429),
                     attempt("d", False, ttft=0.1), attempt("e", True), attempt("e", True)]
    assert (log.lost(), log.rejected(), log.cut_mid_stream(), log.duplicated()) == (2, 1, 1, 1)  # b and f lost


def test_a_retried_key_answered_once_is_neither_lost_nor_duplicated() -> None:
    log = RequestLog()
    log.keys.append("k")
    log.attempts += [attempt("k", False, ttft=0.2), attempt("k", True)]
    assert (log.lost(), log.cut_mid_stream(), log.duplicated()) == (0, 0, 0)


def test_timeline_series_and_replica_seconds() -> None:
    tl = Timeline(samples=[(100.0, {("cpu", "serving"): 1}), (102.0, {("cpu", "serving"): 2, ("cpu", "warm"): 1}),
                           (104.0, {})])
    assert tl.replica_seconds() == {"cpu": 2 * 1 + 2 * 3}
    assert tl.scale_events() == 2
    assert tl.series(100.0)[1] == {"t_s": 2.0, "replicas": {"cpu/serving": 2, "cpu/warm": 1}}
    assert tl.serving_at(100.0) == [(0.0, 1), (2.0, 2), (4.0, 0)]


def test_scale_up_is_the_first_sample_with_more_serving_replicas_than_at_the_burst() -> None:
    serving = [(0.0, 1), (10.0, 1), (15.5, 1), (19.0, 2), (30.0, 3)]
    assert scale_up_s(serving, burst_at_s=15.0) == pytest.approx(4.0)
    assert scale_up_s([(0.0, 2), (20.0, 2)], burst_at_s=15.0) is None
