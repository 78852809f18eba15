"""The kopf operator: read a snapshot of the cluster, ask `infleet.policy` for a plan, apply it idempotently.

Modules, edge to core: `cli` (``infleet run``), `handlers` (kopf wiring, thin), `reconcile` (one pass:
snapshot -> plan -> apply -> status), `snapshot` (Kubernetes objects -> policy inputs), `manifests` (plan ->
Kubernetes objects, pure), `apply` (server-side apply and pruning), `status` (conditions and events),
`metrics` (the operator's Prometheus series), `scrape` (worker metrics for the autoscaler).
"""
