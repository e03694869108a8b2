"""Env-var diagnostics for settings: errors named as the env var, typos, service links.

Kept apart from the settings schemas so each schema reads as a list of fields. Used by the
worker's and the trainer's settings alike (prefix ``PIPELINE_`` or ``TRAINER_``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError


def describe_validation_error(
    exc: ValidationError, prefix: str, settings_cls: type[BaseModel] | None = None
) -> str:
    """One line per bad field, named as the env var an operator would set."""
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        if path and path[0].upper().startswith(prefix):  # a dotenv key is reported raw
            path[0] = path[0][len(prefix) :]
        env = prefix + "__".join(p.upper() for p in path)
        if err["type"] == "extra_forbidden":
            hint = _suggest(env, settings_cls, prefix) if settings_cls else ""
            lines.append(f"{env}: not a setting{hint}")
            continue
        shown = _shown(path, err.get("input"))
        lines.append(f"{env} ({'.'.join(path).lower()}): {err['msg']} (got {shown})")
    return "invalid settings:\n  " + "\n  ".join(lines)


# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_9108_TCP, ... for every Service in
# the namespace (a Service named "pipeline" gives PIPELINE_PORT): never our settings.
_SERVICE_LINK = re.compile(
    r"_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$"
)


def env_names(settings_cls: type[BaseModel], prefix: str) -> list[str]:
    """Every env var a settings class reads, nested groups joined with ``__``."""
    names: list[str] = []
    for name, info in settings_cls.model_fields.items():
        env = prefix + name.upper()
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names += env_names(nested, env + "__")
        else:
            names.append(env)
    return names


def unknown_env(
    environ: Mapping[str, str], prefix: str, settings_cls: type[BaseModel]
) -> list[str]:
    """Env vars with our prefix that name no setting (typos), each with a suggestion.

    They are warned about, not refused: the environment is shared (Kubernetes service links,
    CI systems that use PIPELINE_* themselves). Misspelt nested names (PIPELINE_KAFKA__...)
    and unknown keys in .env do fail: those namespaces are ours alone."""
    known = set(env_names(settings_cls, prefix))
    out = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known or "__" in name:
            continue
        if _SERVICE_LINK.search(name) and not name.endswith(("_MS", "_S")):
            continue
        out.append(f"{name} is not a setting{_suggest(name, settings_cls, prefix)}; ignored")
    return out


def _suggest(name: str, settings_cls: type[BaseModel] | None, prefix: str) -> str:
    if settings_cls is None:
        return ""
    close = difflib.get_close_matches(name, env_names(settings_cls, prefix), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _shown(path: list[str], value: Any) -> str:
    """The offending value, unless it is or may contain a secret."""
    if any("password" in p for p in path):
        return "***"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(str(k) for k in value)) + "}"
    return repr(value)
