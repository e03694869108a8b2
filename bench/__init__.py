"""Benchmarks (placeholder so the configured mypy paths exist)."""
