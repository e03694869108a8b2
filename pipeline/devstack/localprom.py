"""A real Prometheus server on loopback, for tests and the docs figures (no Docker here).

It runs the ``prometheus`` binary (Debian's package; ``make tools`` installs it) with a config
we render: one scrape job per target list, the project's rule files, a temporary TSDB and a
free port. Its HTTP API is read with the standard library, so a test can ask what the rules
say about a live worker exactly as an operator's Prometheus would.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.devstack.localkafka import free_ports

HOST = "127.0.0.1"


class LocalPrometheusError(RuntimeError):
    """The server did not start, or its API answered with an error."""


class LocalPrometheus:
    """``with LocalPrometheus(state_dir, {"anomaly-worker": ["127.0.0.1:9108"]}) as prom:``."""

    def __init__(
        self,
        state_dir: Path,
        jobs: Mapping[str, Sequence[str]],
        rule_files: Sequence[Path] = (),
        interval_s: float = 1.0,
        binary: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.jobs = jobs
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.interval_s = interval_s
        self.binary = binary or shutil.which("prometheus")
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{int(self.interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.jobs.items()
            ],
        }

    def start(self, timeout_s: float = 60.0) -> LocalPrometheus:
        if self.binary is None:
            raise LocalPrometheusError("prometheus not found on PATH: run `make tools`")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        (self.port,) = free_ports(1, HOST)
        log = (self.state_dir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.state_dir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalPrometheusError(
                    f"prometheus exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if self._get("/-/ready", timeout_s=1.0)[0] == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise LocalPrometheusError(f"prometheus not ready after {timeout_s}s: {self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        path = self.state_dir / "prometheus.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ----------------------------------------------------------------------- API
    def _get(self, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of GET path on the server; status 0 when it cannot be reached."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout_s)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus' error."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        target = f"/api/v1/{path}" + (f"?{query}" if query else "")
        status, raw = self._get(target)
        if status == 0:
            raise LocalPrometheusError(f"GET {self.url}{target}: no answer")
        body = json.loads(raw)
        if body.get("status") != "success":
            raise LocalPrometheusError(f"GET {self.url}{target}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        return list(self.api("query", query=expr)["result"])

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        return list(
            self.api("query_range", query=expr, start=start, end=end, step=step_s)["result"]
        )

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and state."""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and last error."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets_up(self) -> int:
        return sum(1 for t in self.api("targets")["activeTargets"] if t["health"] == "up")
