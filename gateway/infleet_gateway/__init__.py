"""infleet-gateway: one OpenAI-compatible entry point per cluster that routes each request by its `model` to the
ready serving replicas of the matching InferenceDeployment, queues while none has room (the queue the operator
scales on) and holds requests through a scale from zero. See docs/gateway.md."""

__version__ = "0.1.0"
