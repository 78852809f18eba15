"""Closed-loop scenarios on the local control plane: real operator, real worker pods (the pod runner), real
OpenAI requests. `make e2e` runs them; each scenario is one small function in `scenarios.py`."""
