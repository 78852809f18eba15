"""Replay both Azure traces under every policy and the oracle; prints the comparison tables.

    python bench/sim_compare.py            # writes sim-out/{conv,code}/report.json and simulation.png
Trace data: Azure Public Dataset, AzureLLMInferenceDataset2023, CC-BY 4.0 (Patel et al., Splitwise, ISCA 2024).
"""

from __future__ import annotations

import sys
import time

from infleet.cli import main

for name in ("conv", "code"):
    started = time.perf_counter()
    rc = main(
        [
            "simulate",
            "--trace",
            f"../shared/traces/azure-llm-2023-{name}.csv",
            "--compare",
            "--out",
            f"sim-out/{name}",
            *sys.argv[1:],
        ]
    )
    print(f"[{name}: {time.perf_counter() - started:.1f} s including the oracle]\n")
    if rc:
        raise SystemExit(rc)
