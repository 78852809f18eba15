"""The latency histograms' bucket layout (docs/metrics.md) and how an SLO target maps onto it.

A classic histogram can only answer "what fraction was at or under a bucket boundary", so a latency SLO is
measured at a boundary. A target that is not one is measured at the next boundary up (the SLO becomes a
little looser than declared, never stricter, so it cannot page for requests that met the target) and the
choice says so, for the operator to surface in a status condition or event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Shared by every infleet_worker_*_seconds histogram; changes only together with the worker and docs.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)


@dataclass(frozen=True)
class BucketChoice:
    """The bucket an SLO is measured at."""

    target_s: float  # what the user declared
    le_s: float  # the boundary used
    exact: bool

    @property
    def le_regex(self) -> str:
        """A PromQL regex matching the boundary's ``le`` label however the client spelled it.

        Python's client writes ``1.0``, Go's writes ``1``; Prometheus 3 normalises both to ``1.0``, 2.x
        keeps what was scraped. Matching both keeps the rules right across clients and versions.
        """
        return _le_regex(self.le_s)

    @property
    def le_label(self) -> str:
        """The boundary as the Python client writes it (``0.5``, ``1.0``), for humans and labels."""
        return repr(float(self.le_s))

    @property
    def note(self) -> str:
        if self.exact:
            return f"target {self.le_label}s is a bucket boundary"
        return (
            f"target {self.target_s!r}s is not a bucket boundary; measured at the next boundary up, "
            f"{self.le_label}s, so the SLO is evaluated slightly looser than declared"
        )


def _le_regex(le_s: float) -> str:
    forms = {repr(float(le_s))}
    if float(le_s).is_integer():
        forms.add(str(int(le_s)))
    escaped = sorted(f.replace(".", "\\\\.") for f in forms)  # the rule text itself holds a PromQL string
    return "|".join(escaped)


def bucket_for_target(target_s: float) -> BucketChoice:
    """Pick the bucket boundary at which a latency target is measured.

    Raises ValueError for targets that no boundary can measure (not positive, not finite, or above the
    largest finite boundary, where only ``+Inf`` remains and every request would count as good).
    """
    if not math.isfinite(target_s) or target_s <= 0:
        raise ValueError(f"latency target must be a positive number of seconds, got {target_s!r}")
    for le in LATENCY_BUCKETS_S:
        if math.isclose(target_s, le, rel_tol=1e-9, abs_tol=1e-12):
            return BucketChoice(target_s=target_s, le_s=le, exact=True)
        if target_s < le:
            return BucketChoice(target_s=target_s, le_s=le, exact=False)
    raise ValueError(
        f"latency target {target_s!r}s is above the largest histogram bucket ({LATENCY_BUCKETS_S[-1]!r}s); "
        "it cannot be measured from infleet_worker_* histograms"
    )
