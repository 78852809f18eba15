"""Whether the cluster serves an optional API (a CRD someone else installs), looked up at most every ``recheck_s``.

The PrometheusRule and InferencePool writers both need it: a cluster without the API is normal (one info line),
an API that appears later is picked up without a restart, a transient API error keeps the last answer, and a
404 on write asks for a fresh look next time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, is_transient

log = logging.getLogger("infleet.controller")


def discovery_lists(kube: Kube, api_path: str, plural: str) -> bool:
    """Whether API discovery at ``api_path`` (e.g. /apis/monitoring.coreos.com/v1) lists ``plural``."""
    found = kube.get(api_path)
    return found is not None and any(r.get("name") == plural for r in found.get("resources") or [])


class OptionalApi:
    def __init__(
        self,
        kube: Kube,
        api_path: str,
        plural: str,
        *,
        found: str,
        missing: str,
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.api_path, self.plural = kube, api_path, plural
        self.found_message, self.missing_message = found, missing
        self.recheck_s, self.clock = recheck_s, clock
        self.known: bool | None = None
        self.checked_at = float("-inf")

    def available(self) -> bool:
        now = self.clock()
        if self.known is None or now - self.checked_at >= self.recheck_s:
            try:
                available = discovery_lists(self.kube, self.api_path, self.plural)
            except ApiException as exc:
                if not is_transient(exc):
                    raise
                return bool(self.known)  # keep the last answer through a blip
            if available != self.known:
                log.info(self.found_message if available else self.missing_message)
            self.known, self.checked_at = available, now
        return bool(self.known)

    def recheck(self) -> None:
        """Look again on the next call (the API went away since discovery, or was just installed)."""
        self.checked_at = float("-inf")
