"""Where the model store lives: a local directory, or an fsspec URL on an object store.

Why: a shared RWX volume is the one piece of the production topology that object storage
replaces. ``PIPELINE_MODEL_STORE`` / ``TRAINER_MODEL_STORE`` take a plain path (the rename-based
layout of :mod:`pipeline.contract.artifact`) or a URL (``s3://bucket/prefix``, ``gs://``,
``az://``, ``file://``), with credentials from the usual environment of that filesystem
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...), never from a
setting, so nothing here can log them.

Object stores have no rename, so publishing is ordered instead: every file of a version goes
under ``<name>/<version>/`` first, ``manifest.json`` (which carries the checksums) last, and
only then is ``LATEST`` overwritten. A version without its manifest is incomplete (being
written, or abandoned by a crashed trainer) and is never served; a reader downloads a complete
version into a local cache and validates it there exactly like a local one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from pipeline.contract.exceptions import ArtifactNotFound, ConfigError, StoreUnavailable

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"  # the completion marker: written last, holds the checksums
LATEST_FILE = "LATEST"
CACHE_DIR_NAME = "anomaly-pipeline-models"
CACHED_VERSIONS = 3  # local copies kept per model: the new one, the one in service, one more
# Fail in seconds, not minutes, when the store is down: a worker polls it between batches.
_S3_OPTIONS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 30,
        "retries": {"max_attempts": 2, "mode": "standard"},
        # botocore's default CRC32 checksum headers are not understood by every S3-compatible
        # server (S3Proxy answers NotImplemented); the manifest's sha256 is our integrity check
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    },
}


def is_url(location: str | Path) -> bool:
    """True for ``scheme://...`` locations; a plain path keeps the local rename layout."""
    return isinstance(location, str) and "://" in location


def _redacted(url: str) -> str:
    """The URL without any ``user:password@`` part, for messages and logs."""
    if not is_url(url):
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def filesystem(location: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``location`` and the root path inside it."""
    scheme = location.split("://", 1)[0] if is_url(location) else "file"
    options = _S3_OPTIONS if scheme in ("s3", "s3a") else {}
    try:
        fs, root = fsspec.core.url_to_fs(location, **options)
    except (ImportError, ValueError) as exc:
        raise StoreUnavailable(
            f"model store {_redacted(location)}: no filesystem for {scheme!r} ({exc}); "
            "s3:// needs s3fs, gs:// gcsfs, az:// adlfs"
        ) from exc
    return fs, str(root).rstrip("/")


@contextlib.contextmanager
def _store_errors(location: str, action: str) -> Iterator[None]:
    """Library errors at the boundary: missing objects are ArtifactNotFound, the rest
    (network, credentials, throttling) StoreUnavailable naming the store and the action."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ArtifactNotFound(f"model store {_redacted(location)}: {action}: not found") from exc
    except PermissionError as exc:
        raise StoreUnavailable(
            f"model store {_redacted(location)}: {action}: access denied (check the "
            f"credentials in the environment): {exc}"
        ) from exc
    except (ArtifactNotFound, StoreUnavailable):
        raise
    except Exception as exc:  # botocore/aiohttp errors have no common base we could name
        raise StoreUnavailable(
            f"model store {_redacted(location)}: {action}: {type(exc).__name__}: {exc}"
        ) from exc


def check_access(location: str | Path, setting: str) -> None:
    """ConfigError naming ``setting`` when the store cannot be listed (wrong credentials,
    unknown bucket, unreachable endpoint): a process fails at start, not at its first publish
    or reload. A plain path is not checked (it is created on first publish)."""
    if not is_url(location):
        return
    try:
        fs, root = filesystem(str(location))
        with _store_errors(str(location), "listing the store"):
            fs.ls(root, detail=False, refresh=True)
    except ArtifactNotFound:
        _check_bucket(fs, root, str(location), setting)  # an empty prefix is fine, no bucket not
    except StoreUnavailable as exc:
        raise ConfigError(f"{setting}: {exc}") from exc


def _check_bucket(fs: AbstractFileSystem, root: str, location: str, setting: str) -> None:
    if _is_local(fs):
        return  # the first publish creates the directories
    bucket = root.split("/", 1)[0]
    try:
        with _store_errors(location, f"looking for bucket {bucket!r}"):
            fs.ls(bucket, detail=False)  # exists() says True for a missing bucket on some servers
    except ArtifactNotFound as exc:
        raise ConfigError(
            f"{setting}: model store {_redacted(location)}: no bucket {bucket!r}"
        ) from exc
    except StoreUnavailable as exc:
        raise ConfigError(f"{setting}: {exc}") from exc


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols


# ------------------------------------------------------------------ publishing
def upload_version(location: str, local_dir: Path, name: str, version: str) -> None:
    """Copy a complete local version under ``<name>/<version>/``, the manifest last."""
    fs, root = filesystem(location)
    prefix = f"{root}/{name}/{version}"
    files = sorted(p for p in local_dir.iterdir() if p.is_file())
    ordered = [p for p in files if p.name != MANIFEST_FILE] + [local_dir / MANIFEST_FILE]
    with _store_errors(location, f"uploading {name}/{version}"):
        if _is_local(fs):  # object stores have no directories; a local filesystem does
            fs.makedirs(prefix, exist_ok=True)
        for path in ordered:
            fs.put_file(str(path), f"{prefix}/{path.name}")
    log.info(
        "model version uploaded",
        extra={"store": _redacted(location), "model": name, "version": version},
    )


def write_latest(location: str, name: str, version: str) -> None:
    """Point LATEST at a complete version; a single PUT replaces the object whole."""
    fs, root = filesystem(location)
    if not version_complete(location, name, version):
        raise ArtifactNotFound(
            f"cannot point LATEST at {_redacted(location)}/{name}/{version}: no manifest there"
        )
    with _store_errors(location, f"writing {name}/{LATEST_FILE}"):
        fs.pipe_file(f"{root}/{name}/{LATEST_FILE}", f"{version}\n".encode())


def version_complete(location: str, name: str, version: str) -> bool:
    """True once the version's manifest (its completion marker) exists."""
    fs, root = filesystem(location)
    with _store_errors(location, f"checking {name}/{version}"):
        return bool(fs.exists(f"{root}/{name}/{version}/{MANIFEST_FILE}"))


# --------------------------------------------------------------------- reading
def read_latest(location: str, name: str) -> str:
    """The text of ``<name>/LATEST`` (validated by the caller)."""
    fs, root = filesystem(location)
    with _store_errors(location, f"reading {name}/{LATEST_FILE} (no published model?)"):
        data: bytes = fs.cat_file(f"{root}/{name}/{LATEST_FILE}")
    return data.decode(errors="replace").strip()


def cache_dir(location: str) -> Path:
    """Local cache of one store's versions (temp dir: a pod's emptyDir in k8s)."""
    digest = hashlib.sha256(_redacted(location).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / CACHE_DIR_NAME / digest


def version_dir(location: str | Path, name: str, version: str) -> Path:
    """The local directory of a version: in place for a path, a validated-later copy for a URL."""
    if is_url(location):
        return fetch_version(str(location), name, version)
    return Path(location) / name / version


def fetch_version(location: str, name: str, version: str) -> Path:
    """A local copy of a complete version; an incomplete one raises ArtifactNotFound.

    The manifest is read first: every other file was written before it, so all of them are
    complete once it exists. The copy lands in a staging directory renamed into the cache, so
    a crash mid-download leaves nothing that looks complete; checksums are verified by the
    loader on the local copy.
    """
    target = cache_dir(location) / name / version
    if (target / MANIFEST_FILE).is_file():
        return target
    if not version_complete(location, name, version):
        raise ArtifactNotFound(
            f"model store {_redacted(location)}: {name}/{version} is incomplete (no "
            f"{MANIFEST_FILE}: still being published, or abandoned); not served"
        )
    fs, root = filesystem(location)
    staging = target.parent / f".fetch-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        with _store_errors(location, f"downloading {name}/{version}"):
            for entry in fs.ls(f"{root}/{name}/{version}", detail=True, refresh=True):
                if entry["type"] == "file":  # a version has no subdirectories; skip markers
                    fs.get_file(entry["name"], str(staging / Path(str(entry["name"])).name))
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _trim_cache(target)
    return target


def _trim_cache(fetched: Path, keep: int = CACHED_VERSIONS) -> None:
    """Keep the ``keep`` most recently fetched versions of a model, ``fetched`` included: the
    one in service (a per-entity bank reads its weights file lazily) is the one fetched before
    it, and a worker running for months must not fill its disk with old versions."""
    entries = [p for p in fetched.parent.iterdir() if p.is_dir()]
    others = sorted(
        (p for p in entries if not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    # downloads of a process killed mid-way; an hour is far longer than any live download
    abandoned = [p for p in entries if p.name.startswith(".fetch-") and _age_s(p) > 3600]
    for old in [p for p in others if p != fetched][keep - 1 :] + abandoned:
        shutil.rmtree(old, ignore_errors=True)
        log.info("cached model version removed", extra={"path": str(old)})


def _age_s(path: Path) -> float:
    return time.time() - path.stat().st_mtime


# --------------------------------------------------------------------- listing
@dataclass(frozen=True)
class VersionInfo:
    """One version of a model: complete (its manifest exists), LATEST or not, and when it was
    published (the manifest's ``created_at``; None for an incomplete version)."""

    version: str
    complete: bool
    latest: bool
    created_at: str | None = None


def list_versions(location: str | Path, name: str) -> list[VersionInfo]:
    """Every version of ``name``: complete ones oldest first by publication time (version ids
    of one second do not sort by time), then the incomplete ones."""
    fs, root = filesystem(str(location))
    base = f"{root}/{name}"
    with _store_errors(str(location), f"listing {name}"):
        entries = fs.ls(base, detail=True, refresh=True) if fs.exists(base) else []
        dirs = [Path(str(e["name"])).name for e in entries if e["type"] == "directory"]
        created = {v: _created_at(fs, f"{base}/{v}/{MANIFEST_FILE}") for v in dirs}
    try:
        latest: str | None = read_latest(str(location), name)
    except ArtifactNotFound:
        latest = None
    infos = [
        VersionInfo(v, created[v] is not None, v == latest, created[v])
        for v in dirs
        if not v.startswith(".")  # local staging directories
    ]
    return sorted(infos, key=lambda i: (not i.complete, i.created_at or "", i.version))


def _created_at(fs: AbstractFileSystem, manifest: str) -> str | None:
    """The manifest's ``created_at``, or None when there is no (readable) manifest."""
    try:
        raw = json.loads(fs.cat_file(manifest))
    except FileNotFoundError:
        return None
    except ValueError:
        return ""  # present but unreadable: complete as far as ordering goes; load refuses it
    return str(raw.get("created_at", "")) if isinstance(raw, dict) else ""


def prune(location: str | Path, name: str, keep: int, *, dry_run: bool = False) -> list[str]:
    """Delete complete versions beyond the newest ``keep``; LATEST and incomplete versions
    (maybe being published right now) are never deleted. Returns the versions removed."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    complete = [v for v in list_versions(location, name) if v.complete]
    doomed = [v.version for v in complete[:-keep] if not v.latest]
    fs, root = filesystem(str(location))
    for version in doomed if not dry_run else []:
        with _store_errors(str(location), f"deleting {name}/{version}"):
            # the manifest first: a half-deleted version then reads as incomplete, not corrupt
            fs.rm_file(f"{root}/{name}/{version}/{MANIFEST_FILE}")
            # one DELETE per object: the bulk DeleteObjects call needs a checksum header that
            # not every S3-compatible server accepts, and a version has only a few files
            for path in fs.find(f"{root}/{name}/{version}"):
                fs.rm_file(path)
            if fs.exists(f"{root}/{name}/{version}"):
                fs.rm(f"{root}/{name}/{version}", recursive=True)  # a local empty directory
        log.info("model version pruned", extra={"model": name, "version": version})
    return doomed
