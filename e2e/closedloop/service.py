"""The tiny worker's service model on this machine, measured on one live replica (straight to the worker, not
through the gateway): what `infleet simulate --service` needs to replay the same load.

- ``tpot_base_s``, ``tpot_per_seq_s``: time per output token of one stream alone and of ``BATCH`` concurrent
  streams (a line through the two);
- ``prefill_tokens_per_s``: prompt tokens over time to first token of a long prompt, less one decode step;
- ``max_batch``, ``kv_tokens``: the worker's slots (``--num-slots``, 8) and slots x ``--max-seq-len`` (512).
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor

from closedloop.requests import Attempt, RequestLog

BATCH = 4
WORKER_SLOTS, WORKER_MAX_SEQ_LEN = 8, 512  # infleet-worker serve defaults (the operator passes none)
DECODE_TOKENS = 32


def _tpot(a: Attempt) -> float | None:
    if not a.ok or a.ttft_s is None or a.latency_s is None or a.completion_tokens < 2:
        return None
    return (a.latency_s - a.ttft_s) / (a.completion_tokens - 1)


def _median(values: list[float | None], what: str) -> float:
    got = [v for v in values if v is not None]
    if not got:
        raise RuntimeError(f"no successful request to measure {what} on")
    return statistics.median(got)


def measure_service(ip: str, model: str, rounds: int = 3) -> dict[str, float]:
    log = RequestLog()
    short, long_prompt = "Measure: fleet fleet", " ".join(["fleet"] * 60)
    log.complete(ip, model, short, 4)  # warm-up
    alone = [_tpot(log.complete(ip, model, short, DECODE_TOKENS)) for _ in range(rounds)]
    tpot_1 = _median(alone, "decode alone")
    with ThreadPoolExecutor(BATCH) as pool:
        batched = [_tpot(a) for _ in range(rounds) for a in
                   pool.map(lambda _: log.complete(ip, model, short, DECODE_TOKENS), range(BATCH))]
    tpot_n = _median(batched, "batched decode")
    prefill = [log.complete(ip, model, long_prompt, 1) for _ in range(rounds)]
    ttft = _median([a.ttft_s for a in prefill if a.ok], "prefill")
    prompt_tokens = max(a.prompt_tokens for a in prefill)
    log.close()
    per_seq = max(0.0, (tpot_n - tpot_1) / (BATCH - 1))
    return {
        "prefill_tokens_per_s": round(prompt_tokens / max(ttft - tpot_1, 1e-4), 1),
        "tpot_base_s": round(max(tpot_1 - per_seq, 1e-4), 6),
        "tpot_per_seq_s": round(per_seq, 6),
        "max_batch": WORKER_SLOTS,
        "kv_tokens": WORKER_SLOTS * WORKER_MAX_SEQ_LEN,
    }
