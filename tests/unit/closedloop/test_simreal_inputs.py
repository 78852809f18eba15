"""What sim-to-real hands `infleet simulate`: the replayed requests, the emulated cold start, the measured model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from closedloop.scenarios import cpu_pool, trace_deployment
from closedloop.simreal import write_sim_inputs

from infleet.sim.fleet import load_fleet, with_service_overrides
from infleet.sim.trace import load_trace

SERVICE = {"prefill_tokens_per_s": 20000.0, "tpot_base_s": 0.002, "tpot_per_seq_s": 0.0001, "max_batch": 8,
           "kv_tokens": 4096}


def test_inputs_load_in_the_simulator_with_the_emulated_cold_start(tmp_path: Path) -> None:
    doc = {"requests": [{"at_s": 0.25, "prompt_tokens": 120, "completion_tokens": 40},
                        {"at_s": 1.5, "prompt_tokens": None, "completion_tokens": 0}],
           "manifests": [cpu_pool("p", cold_start_s=600), trace_deployment("d", "p", min_replicas=1, max_replicas=3)]}
    paths = write_sim_inputs(doc, SERVICE, 0.02, tmp_path)
    rows = list(csv.DictReader(paths["trace"].open()))
    assert [r["ContextTokens"] for r in rows] == ["120", "288"]  # an unserved request: its prompt's byte count
    assert rows[1]["GeneratedTokens"] == "1"
    assert next(yaml.safe_load_all(paths["pools"].read_text()))["spec"]["coldStartSeconds"] == 12  # 600 x 0.02
    trace = load_trace(paths["trace"])
    assert len(trace) == 2 and trace.duration_s > 1.0
    fleet = with_service_overrides(load_fleet([paths["pools"]], paths["deployment"], None),
                                   json.loads(paths["service"].read_text()))
    assert fleet.pools[0].service.tpot_base_s == 0.002
    assert fleet.pools[0].service.max_batch == 8
