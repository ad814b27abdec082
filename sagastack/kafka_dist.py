"""Apache Kafka's jars, resolved by Maven from Maven Central into a local cache.

No archive is downloaded by hand and nothing but Maven Central is asked: a minimal
``pom.xml`` naming the pinned artifacts (:data:`ARTIFACTS`) is written into the cache
directory, with a ``settings.xml`` whose only mirror is Maven Central, and

    mvn -q -B -s <cache>/settings.xml dependency:copy-dependencies -DoutputDirectory=<cache>/lib.partial

copies every runtime jar. Only when mvn succeeded and the jars the runtime needs are there
is ``lib.partial`` renamed to ``lib`` and the marker file ``<cache>/complete.json`` written
(atomically, naming the artifacts it holds). A cache counts as complete only if its marker
names exactly the pinned artifacts, so an interrupted or failed download, or a cache made
for other versions, is resolved again instead of used.

The cache is ``.run/kafka-dist/<kafka version>/`` under the project directory, or the
directory in ``SAGA_KAFKA_CACHE``; it is reused by every run (``make run``, the tests,
CI). Maven's own repository (``~/.m2/repository``) keeps the downloaded files too, so a
second resolution needs no network. Concurrent callers (two test sessions, ``make run``
beside them) are serialised by a lock file; the second finds the cache complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.2"
#: Kafka's own poms ask for SLF4J 1.7, whose API cannot find the SLF4J 2 binding (the
#: broker would log nowhere); a direct dependency on the 2.x API wins Maven's resolution.
SLF4J_VERSION = "2.0.17"
#: maven-dependency-plugin, pinned so mvn never picks "the latest" on its own.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"

#: (groupId, artifactId, version): the broker and its tools (``kafka.Kafka``,
#: ``kafka.tools.StorageTool``), the console tools, and the SLF4J → log4j2 binding that
#: makes the broker log to a file (with the SLF4J 2 API it needs).
ARTIFACTS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
    ("org.apache.kafka", "kafka-tools", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ("org.slf4j", "slf4j-api", SLF4J_VERSION),
)

#: Jars that must be in ``lib`` for the cache to be usable (file-name prefixes).
REQUIRED_JARS = (
    f"kafka_2.13-{KAFKA_VERSION}.jar",
    f"kafka-tools-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"kafka-server-{KAFKA_VERSION}.jar",
    f"log4j-core-{LOG4J_VERSION}.jar",
    f"log4j-slf4j2-impl-{LOG4J_VERSION}.jar",
    f"slf4j-api-{SLF4J_VERSION}.jar",
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
MARKER = "complete.json"
#: The broker (KRaft) needs Java 17 or newer.
MIN_JAVA = 17


class KafkaDistError(RuntimeError):
    """The jars could not be resolved (no mvn, no network, a failed build)."""


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of ``version`` live: ``$SAGA_KAFKA_CACHE`` if set, else
    ``<project>/.run/kafka-dist/<version>``."""
    override = os.environ.get("SAGA_KAFKA_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    return PROJECT_DIR / ".run" / "kafka-dist" / version


def classpath(lib: Path) -> str:
    """The JVM class path of every jar in ``lib`` (a wildcard entry, as Kafka's scripts use)."""
    return str(lib / "*")


def java_major_version(java: str = "java") -> int | None:
    """The major version of ``java`` (17 for "17.0.15"), or None if it is not installed
    or does not answer."""
    exe = shutil.which(java)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" is Java 8
        major = int(match.group(2))
    return major


def java_available() -> bool:
    """True if ``java`` is on PATH and is at least :data:`MIN_JAVA`."""
    major = java_major_version()
    return major is not None and major >= MIN_JAVA


def is_complete(cache: Path) -> bool:
    """True if ``cache`` holds a finished resolution of exactly :data:`ARTIFACTS`."""
    try:
        marker = json.loads((cache / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("artifacts") != [list(a) for a in ARTIFACTS]:
        return False
    lib = cache / "lib"
    jars = marker.get("jars")
    if not isinstance(jars, list) or not jars:
        return False
    return all((lib / str(jar)).is_file() for jar in jars)


def resolvable(cache: Path | None = None) -> bool:
    """True if the jars are cached, or mvn is installed to resolve them."""
    return is_complete(cache or cache_dir()) or shutil.which("mvn") is not None


def missing(cache: Path | None = None) -> str | None:
    """What this machine lacks to run Apache Kafka, as a noun phrase for a message
    (``"Java 17+"``, ``"Maven (mvn)"`` to fetch the jars when they are not cached), or
    None when it can run it."""
    if not java_available():
        return f"Java {MIN_JAVA}+"
    if not resolvable(cache):
        return "Maven (mvn)"
    return None


def ensure(cache: Path | None = None, *, timeout: float = 900.0) -> Path:
    """Return the ``lib`` directory holding every jar, resolving it first if the cache
    is not complete. Raises :class:`KafkaDistError` (with mvn's output) if it cannot."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if not is_complete(cache):
            _resolve(cache, timeout)
    return cache / "lib"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve(cache: Path, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDistError(
            "Apache Kafka's jars are not cached and Maven (mvn) is not installed to resolve them;"
            " install Maven, or use the Tansu broker (SAGA_BROKER=tansu)"
        )
    (cache / MARKER).unlink(missing_ok=True)
    partial = cache / "lib.partial"
    lib = cache / "lib"
    shutil.rmtree(partial, ignore_errors=True)
    (cache / "pom.xml").write_text(pom_xml())
    (cache / "settings.xml").write_text(settings_xml())
    log_path = cache / "mvn.log"
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(cache / "pom.xml"),
        "-s",
        str(cache / "settings.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    try:
        with open(log_path, "w") as out:
            done = subprocess.run(
                command,
                cwd=cache,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        raise KafkaDistError(f"mvn did not finish within {timeout:.0f}s:\n{_tail(log_path)}") from None
    if done.returncode != 0:
        raise KafkaDistError(f"mvn failed (exit {done.returncode}):\n{_tail(log_path)}")
    jars = sorted(p.name for p in partial.glob("*.jar")) if partial.is_dir() else []
    missing = [jar for jar in REQUIRED_JARS if jar not in jars]
    if missing:
        raise KafkaDistError(f"mvn finished but did not copy {', '.join(missing)}:\n{_tail(log_path)}")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
    tmp = cache / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"artifacts": [list(a) for a in ARTIFACTS], "jars": jars}, indent=1))
    os.replace(tmp, cache / MARKER)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no output)"


def pom_xml() -> str:
    """A pom whose only purpose is to name :data:`ARTIFACTS` as dependencies."""
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in ARTIFACTS
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by sagastack/kafka_dist.py: the jars of Apache Kafka {KAFKA_VERSION} -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sagastack</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>{DEPENDENCY_PLUGIN_VERSION}</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""


def settings_xml() -> str:
    """Maven settings whose only mirror, for every repository, is Maven Central."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by sagastack/kafka_dist.py: every repository is Maven Central -->
<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0">
  <mirrors>
    <mirror>
      <id>central-only</id>
      <mirrorOf>*</mirrorOf>
      <url>{MAVEN_CENTRAL}</url>
    </mirror>
  </mirrors>
</settings>
"""
