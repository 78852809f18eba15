"""infleet: serve models across heterogeneous accelerator pools at the lowest cost that meets a declared SLO."""

__version__ = "0.1.0"
