"""hwtests: hardware-in-the-loop tests and benchmarks for Linux kernel networking."""

__version__ = "0.1.0"
