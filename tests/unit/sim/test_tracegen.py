"""The trace generator: seeded, the Azure CSV format, and each shape has the property it is named for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infleet.sim.trace import load_trace
from infleet.sim.tracegen import TraceShape, generate, write_csv


def test_same_seed_same_bytes_and_the_simulator_reads_it_back(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_csv(generate(TraceShape(shape="bursts", duration_s=600, seed=7)), a)
    write_csv(generate(TraceShape(shape="bursts", duration_s=600, seed=7)), b)
    write_csv(generate(TraceShape(shape="bursts", duration_s=600, seed=8)), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    back = load_trace(a)
    made = generate(TraceShape(shape="bursts", duration_s=600, seed=7))
    assert len(back) == len(made)
    assert np.allclose(back.arrival_s, made.arrival_s, atol=1e-6)
    assert np.array_equal(back.prompt_tokens, made.prompt_tokens)


def test_bursts_have_seconds_far_above_the_mean_rate() -> None:
    flat = generate(TraceShape(shape="prompt-shift", duration_s=1800, rate_rps=4, shift_factor=1.0))
    bursty = generate(TraceShape(shape="bursts", duration_s=1800, rate_rps=4, seed=1))
    peak = lambda tr: np.bincount(tr.arrival_s.astype(int)).max()  # noqa: E731
    assert peak(bursty) >= 3 * peak(flat) / 2 and peak(bursty) > 20


def test_diurnal_rate_rises_and_falls() -> None:
    tr = generate(TraceShape(shape="diurnal", duration_s=3600, rate_rps=4))
    per_tenth = np.histogram(tr.arrival_s, bins=10, range=(0, 3600))[0]
    assert per_tenth[4:6].mean() > 4 * per_tenth[[0, 9]].mean()


def test_long_context_share_grows_within_10k_to_100k() -> None:
    tr = generate(TraceShape(shape="long-context", duration_s=3600, rate_rps=3, long_share=0.5))
    late = tr.prompt_tokens[tr.arrival_s > 2700]
    early = tr.prompt_tokens[tr.arrival_s < 900]
    assert (late >= 10_000).mean() > 0.3 and (early >= 10_000).mean() < 0.1
    assert tr.prompt_tokens.max() <= 100_000


def test_prompt_shift_keeps_the_rate_and_moves_the_prompts() -> None:
    tr = generate(TraceShape(shape="prompt-shift", duration_s=3000, rate_rps=4, shift_factor=4.0))
    thirds = [(tr.arrival_s >= a) & (tr.arrival_s < a + 1000) for a in (0, 1000, 2000)]
    counts = [int(s.sum()) for s in thirds]
    medians = [float(np.median(tr.prompt_tokens[s])) for s in thirds]
    assert max(counts) < 1.15 * min(counts)
    assert medians[1] > 3 * medians[0] and medians[1] > 3 * medians[2]


def test_bad_parameters_are_clear_errors(tmp_path: Path) -> None:
    from infleet.cli import main

    with pytest.raises(ValueError, match="unknown trace shape"):
        TraceShape(shape="sawtooth")
    assert main(["tracegen", "bursts", "--rate", "-1", "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["tracegen", "diurnal", "--duration", "120", "--out", str(tmp_path / "d.csv")]) == 0
    assert len(load_trace(tmp_path / "d.csv")) > 0
