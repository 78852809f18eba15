"""The chart's runtime metric relabelings are current and cover every mapped name."""

from __future__ import annotations

import re
from pathlib import Path

from infleet.runtimes import RUNTIMES
from infleet.runtimes.normalise import metric_relabelings, render

ROOT = Path(__file__).resolve().parents[3]


def test_committed_relabelings_are_the_generated_ones() -> None:
    committed = (ROOT / "charts/infleet/files/runtime-metric-relabelings.yaml").read_text()
    regenerate = "python -m infleet.runtimes.normalise > charts/infleet/files/runtime-metric-relabelings.yaml"
    assert committed == render(), f"run: {regenerate}"


def test_every_mapped_name_of_every_runtime_is_renamed_to_the_workers() -> None:
    name_rules = [r for r in metric_relabelings() if r["sourceLabels"] == ["__name__"]]
    for runtime in RUNTIMES.values():
        if runtime.metrics is None or runtime.engine == "infleet-worker":
            continue
        m = runtime.metrics
        for sample in (m.waiting, m.running, m.kv_usage, m.requests_total, m.e2e_bucket, m.ttft_bucket,
                       m.prompt_tokens, m.generation_tokens):
            assert sample is not None
            hits = [r for r in name_rules if re.fullmatch(r["regex"], sample)]
            assert len(hits) == 1, sample
            renamed = re.sub(hits[0]["regex"], hits[0]["replacement"].replace("${1}", r"\1"), sample)
            assert renamed.startswith("infleet_worker_")
