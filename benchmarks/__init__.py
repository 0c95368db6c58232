"""The benchmarks: ratio benchmarks and paper-table reproductions (``python benchmarks/<name>.py`` or
``python -m benchmarks.<name>``; results in BENCHMARKS.md). A package so that tests import a benchmark
by name, never by file path."""
