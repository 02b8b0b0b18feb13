"""The project's benchmarks: standalone scripts (``python3 benchmarks/<name>.py``) and one suite that runs the
measurements the issue asks for, each against its reference in the same process (``python -m benchmarks``; see
:mod:`benchmarks.suite` and docs/benchmarks.md)."""
