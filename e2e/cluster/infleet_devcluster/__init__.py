"""Local control plane for development and tests: pinned upstream binaries, simulated accelerator nodes."""
