"""The shared Java/Maven helpers every local JVM service (Kafka, S3Proxy) resolves jars with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.devstack import maven
from pipeline.devstack.maven import Artifact, MavenError


def test_pom_lists_every_artifact_of_the_closure() -> None:
    deps = [Artifact("org.gaul", "s3proxy", "2.6.0"), Artifact("org.slf4j", "slf4j-api", "2.0.17")]
    pom = maven.render_pom("s3proxy", "2.6.0", deps)
    assert "<artifactId>s3proxy-runtime</artifactId>" in pom
    assert "<groupId>org.gaul</groupId><artifactId>s3proxy</artifactId><version>2.6.0" in pom
    assert "<artifactId>slf4j-api</artifactId><version>2.0.17</version>" in pom


@pytest.mark.parametrize("bad", ["2.6.0</version>", "a b", "", "../x"])
def test_coordinates_that_would_break_the_pom_or_cache_path_are_refused(bad: str) -> None:
    with pytest.raises(MavenError, match="not a Maven coordinate part"):
        Artifact("org.gaul", "s3proxy", bad)


def test_cached_closure_is_reused_and_a_missing_jar_forces_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deps = [Artifact("org.gaul", "s3proxy", "2.6.0")]
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "s3proxy-2.6.0.jar").write_bytes(b"PK")
    (tmp_path / maven.MARKER_NAME).write_text(json.dumps({"jars": ["s3proxy-2.6.0.jar"]}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no mvn reachable

    jars = maven.resolve("s3proxy", deps, tmp_path)
    assert (jars.libs_dir, jars.downloaded) == (libs, False)
    assert jars.classpath() == f"{libs}/*"

    (libs / "s3proxy-2.6.0.jar").unlink()
    with pytest.raises(MavenError, match=r"download the s3proxy 2\.6\.0 jars"):
        maven.resolve("s3proxy", deps, tmp_path)
