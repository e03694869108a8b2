"""Markdown tables of every setting, generated from the settings classes themselves.

README's configuration section is produced with ``python -m pipeline settings-doc``; a test
checks that every env var name appears in README.md, so a new knob cannot go undocumented.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def env_rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    """(ENV_VAR, default, description) for every leaf field, nested groups flattened."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        env = f"{prefix}{name.upper()}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(env_rows(annotation, env + "__"))
        else:
            rows.append((env, _default(field), field.description or ""))
    return rows


def markdown_table(model: type[BaseModel], prefix: str) -> str:
    lines = ["| Env var | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{env}` | {default} | {desc} |" for env, default, desc in env_rows(model, prefix)]
    return "\n".join(lines)


def _default(field: FieldInfo) -> str:
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, BaseModel):
        return "(group)"
    if value == []:
        return "empty"
    return f"`{value}`"
