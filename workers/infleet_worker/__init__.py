"""infleet worker: the torch inference engine and its OpenAI-compatible server."""

__version__ = "0.1.0"
