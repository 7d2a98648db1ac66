"""Benchmarks that print tables (not tests): `python bench/tracking.py`."""
