"""Autoscaler: monotone in load, bounded, fast up, stabilised down, scale to zero and back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.policy import AutoscalerConfig, AutoscalerState, LoadObservation, calibrate_capacity, decide
from infleet.policy.autoscaler import queue_holds

CFG = AutoscalerConfig(latency_target_s=1.0, scale_down_window_s=180.0, scale_to_zero_after_s=300.0)


def run(rates: list[float], cfg: AutoscalerConfig = CFG, period: float = 15.0) -> list[float]:
    state = AutoscalerState()
    out = []
    for k, r in enumerate(rates):
        d = decide(cfg, state, LoadObservation(time_s=k * period, arrival_rate_rps=r))
        state = d.state
        out.append(d.desired_capacity_rps)
    return out


def test_scales_up_at_once() -> None:
    out = run([1.0] * 10 + [10.0, 10.0])
    # the first decision jumps as far as the per-decision cap allows, the next one reaches the demand
    assert out[-2] == pytest.approx(out[-3] * CFG.max_scale_up_factor)
    assert out[-1] >= 10.0 / CFG.target_utilization


def test_scale_down_waits_for_the_window_and_steps() -> None:
    out = run([10.0] * 10 + [1.0] * 30)
    high = out[9]
    # nothing drops within the stabilisation window (180 s = 12 periods)
    assert all(x == pytest.approx(high) for x in out[10:21])
    assert out[-1] < high
    # and no step sheds more than the bounded fraction
    for a, b in itertools.pairwise(out[10:]):
        assert b >= a * (1 - CFG.max_scale_down_fraction) - 1e-9


def test_no_flapping_on_noise() -> None:
    out = run([5.0, 5.2, 4.9, 5.1, 4.8, 5.2] * 10)
    changes = sum(1 for a, b in itertools.pairwise(out) if abs(a - b) > 1e-9)
    assert changes <= 3


def test_scale_to_zero_and_back() -> None:
    out = run([2.0] * 4 + [0.0] * 40 + [3.0])
    assert 0.0 in out
    assert out[-1] > 0


def test_queue_blocks_scale_down() -> None:
    state = decide(CFG, AutoscalerState(), LoadObservation(time_s=0, arrival_rate_rps=10)).state
    for k in range(1, 30):
        d = decide(CFG, state, LoadObservation(time_s=k * 15, arrival_rate_rps=0.5, queue_depth=3))
        state = d.state
        assert d.direction != "down"


def test_which_queue_holds_a_scale_down() -> None:
    """By default any queue does; with a share, only a backlog the capacity does not drain within it."""
    assert queue_holds(CFG, 1, 100.0)
    assert not queue_holds(CFG, 0, 100.0)
    assert not queue_holds(CFG, 3, 13.3, share=0.25)  # drained in 0.23 s, under a quarter of the 1 s target
    assert queue_holds(CFG, 4, 13.3, share=0.25)
    assert queue_holds(CFG, 1, 0.0, share=0.25)  # nothing serves: any queue is a shortage


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0, 50), min_size=1, max_size=12),
    st.floats(0, 50),
    st.floats(0, 20),
    st.integers(0, 50),
    st.integers(0, 50),
)
def test_monotone_in_load_and_bounded(history: list[float], rate: float, extra: float, queue: int, more: int) -> None:
    cfg = AutoscalerConfig(latency_target_s=1.0, min_capacity_rps=0.5, max_capacity_rps=40.0)
    state = AutoscalerState()
    for k, r in enumerate(history):
        state = decide(cfg, state, LoadObservation(time_s=k * 15.0, arrival_rate_rps=r)).state
    now = len(history) * 15.0
    low = decide(cfg, state, LoadObservation(time_s=now, arrival_rate_rps=rate, queue_depth=queue))
    high = decide(cfg, state, LoadObservation(time_s=now, arrival_rate_rps=rate + extra, queue_depth=queue + more))
    assert high.desired_capacity_rps >= low.desired_capacity_rps - 1e-9
    for d in (low, high):
        assert cfg.min_capacity_rps <= d.desired_capacity_rps <= cfg.max_capacity_rps


def test_calibration_is_bounded() -> None:
    f = 1.0
    for _ in range(100):
        f = calibrate_capacity(f, 0.1, 1.0, 0)
    assert f == pytest.approx(2.0)
    for _ in range(100):
        f = calibrate_capacity(f, 5.0, 1.0, 4)
    assert f == pytest.approx(0.5)
    assert calibrate_capacity(1.3, None, 1.0, 0) == 1.3


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="latency_target_s"):
        AutoscalerConfig(latency_target_s=0)
    with pytest.raises(ValueError, match="negative"):
        LoadObservation(time_s=0, arrival_rate_rps=-1)


def test_calibration_holds_inside_its_band_and_moves_outside() -> None:
    assert calibrate_capacity(1.0, 0.85, 1.0, 0) == 1.0  # within 80-90% of target: hold
    assert calibrate_capacity(1.0, 0.7, 1.0, 0) == pytest.approx(1.05)  # headroom, no queue: carry more
    assert calibrate_capacity(1.0, 0.7, 1.0, 3) == 1.0  # headroom but a queue: no raise
    assert calibrate_capacity(1.0, 0.95, 1.0, 0) == pytest.approx(1 / 1.1)  # near target: carry less
    assert calibrate_capacity(1.0, 0.7, 1.0, 0, raise_below=0.6) == 1.0  # the old, wider band held here
    with pytest.raises(ValueError, match="raise_below < lower_above"):
        calibrate_capacity(1.0, 0.5, 1.0, 0, raise_below=0.9, lower_above=0.8)


@given(
    factor=st.floats(0.5, 2.0),
    a=st.floats(0.0, 5.0),
    b=st.floats(0.0, 5.0),
    queue=st.integers(0, 5),
)
def test_calibration_never_rises_with_a_worse_tail(factor: float, a: float, b: float, queue: int) -> None:
    better, worse = sorted((a, b))
    after_better = calibrate_capacity(factor, better, 1.0, queue)
    after_worse = calibrate_capacity(factor, worse, 1.0, queue)
    assert after_worse <= after_better
    assert 0.5 <= after_worse <= 2.0 and 0.5 <= after_better <= 2.0
