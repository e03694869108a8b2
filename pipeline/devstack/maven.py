"""Java and Maven for the local JVM services (Kafka broker, S3Proxy object store).

Why a module of its own: every local service the devstack runs is an official jar from Maven
Central started as a detached JVM. Finding Java 17+, resolving a jar closure once per version
into a per-user cache (marker written last, so an interrupted download is redone) and the small
file helpers around it are the same for each service; the service modules keep only what is
theirs (config files, process lifecycle) and wrap :class:`MavenError` in their own error type.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA = 17
JAVA_HINT = "install openjdk-17-jre-headless (Debian/Ubuntu) or a JDK 17+ from adoptium.net"
MAVEN_HINT = "install maven (Debian/Ubuntu: apt-get install maven) or get it from maven.apache.org"
MARKER_NAME = "download-complete.json"
_COORD_RE = re.compile(r"[A-Za-z0-9_.-]+")


class MavenError(RuntimeError):
    """Java or Maven is missing, too old, or could not resolve a jar closure; says why."""


@dataclass(frozen=True)
class Artifact:
    """One Maven coordinate of a runtime closure (``group:artifact:version``)."""

    group: str
    artifact: str
    version: str

    def __post_init__(self) -> None:
        # Coordinates end up in a pom.xml and in cache paths: nothing but plain tokens.
        for part in (self.group, self.artifact, self.version):
            if not _COORD_RE.fullmatch(part):
                raise MavenError(f"not a Maven coordinate part: {part!r} in {self}")

    @property
    def coordinate(self) -> str:
        """``group:artifact:version``, the form Maven's own messages use."""
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def jar_name(self) -> str:
        """File name ``copy-dependencies`` gives this artifact's jar."""
        return f"{self.artifact}-{self.version}.jar"


@dataclass(frozen=True)
class Jars:
    """A resolved jar directory and whether this call had to run Maven for it."""

    libs_dir: Path
    downloaded: bool
    seconds: float

    def classpath(self) -> str:
        """``libs/*``: the JVM expands the wildcard itself, keeping the command line short."""
        return str(self.libs_dir / "*")


# --------------------------------------------------------------------------- tools


def find_java() -> str:
    """Return a Java 17+ executable; Kafka 4 and S3Proxy 2 do not run on older JVMs."""
    java = _java_candidate()
    if java is None:
        raise MavenError(f"Java {MIN_JAVA}+ not found on PATH or in $JAVA_HOME: {JAVA_HINT}")
    major = parse_java_major(_java_version_output(java))
    if major < MIN_JAVA:
        raise MavenError(f"Java {MIN_JAVA}+ required, {java} is Java {major}: {JAVA_HINT}")
    return java


def _java_candidate() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return str(java)
    return shutil.which("java")


def _java_version_output(java: str) -> str:
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MavenError(f"cannot run `{java} -version`: {exc}") from exc
    return proc.stderr + proc.stdout


def parse_java_major(version_output: str) -> int:
    """Major version from ``java -version`` output (``1.8.0_x`` counts as 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise MavenError(f"cannot parse `java -version` output: {version_output[:200]!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_maven(what: str) -> str:
    """Return ``mvn``; it is needed only for the first start of each version of ``what``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError(
            f"Maven (mvn) not found on PATH; it is needed once to download the {what} jars: "
            f"{MAVEN_HINT}"
        )
    return mvn


# --------------------------------------------------------------------------- jars


def render_pom(name: str, version: str, deps: Sequence[Artifact]) -> str:
    """A throwaway POM whose runtime closure is exactly the jars of ``deps``."""
    body = "".join(
        f"    <dependency><groupId>{d.group}</groupId><artifactId>{d.artifact}</artifactId>"
        f"<version>{d.version}</version></dependency>\n"
        for d in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>local.anomaly-pipeline</groupId><artifactId>{name}-runtime</artifactId>\n"
        f"  <version>{version}</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}  </dependencies>\n</project>\n"
    )


def resolve(name: str, deps: Sequence[Artifact], version_dir: Path, timeout: float = 600.0) -> Jars:
    """Jar dir of ``deps`` (the first is the main artifact); runs Maven only when not cached.

    ``version_dir`` is one cache entry per service version. A marker listing the jars is written
    after Maven succeeds, so an interrupted download is detected and redone; a file lock keeps
    concurrent starts (parallel test sessions, worktrees) from downloading twice.
    """
    main = deps[0]
    version_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(version_dir / ".lock"):
        if download_complete(version_dir):
            log.debug("%s.jars.cached version=%s dir=%s", name, main.version, version_dir)
            return Jars(version_dir / "libs", downloaded=False, seconds=0.0)
        started = time.monotonic()
        _download(name, deps, version_dir, timeout)
        seconds = time.monotonic() - started
    log.info(
        "%s.jars.downloaded version=%s dir=%s seconds=%.1f",
        *(name, main.version, version_dir, seconds),
    )
    return Jars(version_dir / "libs", downloaded=True, seconds=seconds)


def download_complete(version_dir: Path) -> bool:
    """True when the marker exists and every jar it lists is present."""
    try:
        jars = json.loads((version_dir / MARKER_NAME).read_text())["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    libs = version_dir / "libs"
    return bool(jars) and all((libs / str(jar)).is_file() for jar in jars)


def _download(name: str, deps: Sequence[Artifact], version_dir: Path, timeout: float) -> None:
    main = deps[0]
    mvn = find_maven(f"{name} {main.version}")
    (version_dir / MARKER_NAME).unlink(missing_ok=True)
    partial, libs = version_dir / "libs.partial", version_dir / "libs"
    shutil.rmtree(partial, ignore_errors=True)
    pom = version_dir / "pom.xml"
    pom.write_text(render_pom(name, main.version, deps))
    log.info("%s.jars.download version=%s dir=%s", name, main.version, version_dir)
    _run_maven(mvn, pom, partial, main, timeout)
    jars = sorted(p.name for p in partial.glob("*.jar"))
    if main.jar_name not in jars:
        raise MavenError(f"Maven finished but {partial} lacks {main.jar_name}")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    write_json(version_dir / MARKER_NAME, {"version": main.version, "jars": jars})


def _run_maven(mvn: str, pom: Path, dest: Path, main: Artifact, timeout: float) -> None:
    cmd = [
        mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={dest}",
        "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise MavenError(
            f"Maven did not finish downloading {main.coordinate} within {timeout:.0f}s; "
            f"output tail:\n{tail_lines(output)}"
        ) from exc
    except OSError as exc:
        raise MavenError(f"cannot run Maven ({mvn}): {exc}") from exc
    if proc.returncode != 0:
        raise MavenError(
            f"Maven failed (exit {proc.returncode}) resolving {main.coordinate}; "
            f"output tail:\n{tail_lines(proc.stdout + proc.stderr)}"
        )


# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: two starts on one state dir or cache must not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail_lines(text: str, lines: int = 40) -> str:
    """Last ``lines`` lines of ``text``: enough context for an error message."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write via rename so a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def jar_cache(env_var: str, service: str) -> Path:
    """Per-user jar cache of one JVM service (``env_var`` overrides it), so every worktree and
    test run shares one download."""
    override = os.environ.get(env_var)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "anomaly-pipeline" / service
