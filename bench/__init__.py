"""hbt.bench: benchmark harnesses and readable reports (installed from ``bench/``)."""
