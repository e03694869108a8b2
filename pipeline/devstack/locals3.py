"""A real S3-compatible object store (S3Proxy, filesystem backend) on loopback.

Why: the model store on object storage must be tested against a server that speaks the S3 API
with real signatures, not a fake. Like the Kafka broker, S3Proxy (``org.gaul:s3proxy``) comes
from Maven Central once per version into the per-user jar cache (:mod:`pipeline.devstack.maven`)
and runs as a detached JVM; jclouds' ``filesystem`` provider keeps the buckets as directories.

A state directory (default ``./.s3-local``, env ``PIPELINE_S3_STATE_DIR``) holds::

    s3proxy.properties  endpoint, test identity/credential, backend dir
    logback.xml         INFO to stdout (the jar's default is DEBUG)
    s3proxy.log         the JVM's stdout/stderr
    data/<bucket>/      the objects
    s3.json             present only while a server started by us runs

The identity and credential are fixed test values for a loopback server; clients get them
through the usual AWS environment variables (:meth:`S3Record.env`).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.devstack import maven
from pipeline.devstack.localkafka_proc import free_ports, pid_alive

log = logging.getLogger(__name__)

DEFAULT_VERSION = "2.7.0"
ENV_STATE_DIR = "PIPELINE_S3_STATE_DIR"
ENV_CACHE = "PIPELINE_S3_CACHE"
HOST = "127.0.0.1"
IDENTITY = "local-identity"
CREDENTIAL = "local-credential"  # a loopback test server's fixed credential
STATE_NAME = "s3.json"
MAIN_CLASS = "org.gaul.s3proxy.Main"


class LocalS3Error(RuntimeError):
    """S3Proxy could not be resolved, started or stopped; the message says why."""


@dataclass(frozen=True)
class S3Record:
    """What ``s3.json`` says about a running server."""

    pid: int
    endpoint: str
    identity: str
    credential: str = field(repr=False)
    data_dir: str
    version: str

    def env(self) -> dict[str, str]:
        """The AWS variables that point s3fs/botocore (and so the model store) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.identity,
            "AWS_SECRET_ACCESS_KEY": self.credential,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def default_state_dir() -> Path:
    """Per-checkout state dir, so parallel worktrees run separate servers."""
    override = os.environ.get(ENV_STATE_DIR)
    return Path(override).expanduser() if override else Path.cwd() / ".s3-local"


def cache_root() -> Path:
    """Per-user jar cache, shared by every worktree and test run."""
    return maven.jar_cache(ENV_CACHE, "s3proxy")


def resolve_jars(version: str = DEFAULT_VERSION, root: Path | None = None) -> maven.Jars:
    """S3Proxy's jar closure (about 130 jars), downloaded by Maven on first use only."""
    with _errors():
        deps = [maven.Artifact("org.gaul", "s3proxy", version)]
        return maven.resolve("s3proxy", deps, (root or cache_root()) / version)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Callers catch LocalS3Error; the shared Maven module raises its own."""
    try:
        yield
    except maven.MavenError as exc:
        raise LocalS3Error(str(exc)) from exc


def render_properties(port: int, data_dir: Path, identity: str, credential: str) -> str:
    """S3Proxy config: AWS v2/v4 signatures with one identity, buckets as directories."""
    props = {
        "s3proxy.endpoint": f"http://{HOST}:{port}",
        "s3proxy.authorization": "aws-v2-or-v4",
        "s3proxy.identity": identity,
        "s3proxy.credential": credential,
        "jclouds.provider": "filesystem",
        "jclouds.filesystem.basedir": str(data_dir),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOGBACK = """<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{ISO8601} %level [%thread] %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


class LocalS3:
    """Start, stop and inspect one S3Proxy server bound to a state directory."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        version: str = DEFAULT_VERSION,
        cache_dir: Path | None = None,
        credential: str = CREDENTIAL,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.version = version
        self.cache_dir = cache_dir
        self.credential = credential
        self._proc: subprocess.Popen[bytes] | None = None  # kept so stop() reaps our own child

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def status(self) -> S3Record | None:
        """The running server's record, or None (a stale record is removed)."""
        data = maven.read_json(self.state_dir / STATE_NAME)
        if data is None:
            return None
        try:
            record = S3Record(**data)
        except TypeError:
            record = None
        exited = self._proc is not None and self._proc.poll() is not None
        if record is None or exited or not pid_alive(record.pid):
            (self.state_dir / STATE_NAME).unlink(missing_ok=True)
            return None
        return record

    def start(
        self, *, port: int | None = None, buckets: tuple[str, ...] = (), timeout: float = 120.0
    ) -> S3Record:
        """Start S3Proxy (or adopt the one running on this state dir) and create ``buckets``."""
        with maven.file_lock(self.state_dir / ".lock"):
            record = self.status() or self._launch(port, timeout)
        for bucket in buckets:
            (Path(record.data_dir) / bucket).mkdir(parents=True, exist_ok=True)
        return record

    def _launch(self, port: int | None, timeout: float) -> S3Record:
        started = time.monotonic()
        jars = resolve_jars(self.version, self.cache_dir)
        with _errors():
            java = maven.find_java()
        port = port or free_ports(1, HOST)[0]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.state_dir / "s3proxy.properties"
        props.write_text(render_properties(port, self.data_dir, IDENTITY, self.credential))
        props.chmod(0o600)
        (self.state_dir / "logback.xml").write_text(LOGBACK)
        cmd = [
            java, "-Xmx256m", f"-Dlogback.configurationFile={self.state_dir / 'logback.xml'}",
            "-cp", jars.classpath(), MAIN_CLASS, "--properties", str(props),
        ]  # fmt: skip
        log_path = self.state_dir / "s3proxy.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._proc = proc
        endpoint = f"http://{HOST}:{port}"
        self._wait_ready(proc, port, log_path, timeout)
        record = S3Record(
            proc.pid, endpoint, IDENTITY, self.credential, str(self.data_dir), self.version
        )
        maven.write_json(self.state_dir / STATE_NAME, asdict(record))
        log.info(
            "s3.ready endpoint=%s start_to_ready_s=%.1f cold_cache=%s",
            *(endpoint, time.monotonic() - started, jars.downloaded),
        )
        return record

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalS3Error(
                    f"S3Proxy exited with {proc.returncode} before listening on {HOST}:{port}; "
                    f"{log_path} tail:\n{maven.tail_lines(_read(log_path))}"
                )
            if _http_answers(port):
                return
            time.sleep(0.25)
        self._stop_pid(proc.pid, 30.0)
        raise LocalS3Error(
            f"S3Proxy not listening on {HOST}:{port} within {timeout:.0f}s; {log_path} tail:\n"
            f"{maven.tail_lines(_read(log_path))}"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server of this state dir; False when none was running."""
        record = self.status()
        if record is None:
            return False
        self._stop_pid(record.pid, timeout)
        (self.state_dir / STATE_NAME).unlink(missing_ok=True)
        return True

    def _stop_pid(self, pid: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.pid != pid:
            _terminate(pid, timeout)  # started by another process (the CLI)
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http_answers(port: int) -> bool:
    """Any HTTP answer (S3Proxy says 403 to an unsigned request) means it is serving."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status > 0
    except OSError:
        return False
    finally:
        conn.close()


def _terminate(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the JVM has not exited within ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
