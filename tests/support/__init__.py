"""Helpers the tests share (fixtures themselves live in tests/conftest.py)."""
