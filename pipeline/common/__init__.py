"""Plumbing every process shares: structured logs with secret masking, setting value types,
env-var diagnostics for settings, and the generated settings tables.

May import: the standard library and pydantic, plus ``pipeline.contract.exceptions``.
"""
