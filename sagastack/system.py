"""The whole system as child processes of one supervisor.

``System.start`` brings up, in order: the broker and the database (embedded ones unless
``KAFKA_BOOTSTRAP_SERVERS`` / ``<SVC>_DATABASE_URL`` point elsewhere), the payment
provider — the card processor's simulator (``payment_provider``, its own database
``provider_db``, fault control on), unless ``PAYMENT_PROVIDER_URL`` names a real one —
then the three services, and waits until every service reports ready. The payment
service is told the provider's URL (``PAYMENT_PROVIDER_URL``). ``System.stop`` stops them
in reverse order; nothing it started outlives it (every process it starts is recorded in
the run directory's pid file, and a watchdog stops them if the supervisor dies without
stopping them: ``sagastack/watchdog.py``). Everything lives under one run directory.

The embedded broker is one of two (``System.broker_kind``, or ``SAGA_BROKER``):

* ``tansu`` — Tansu from a PyPI wheel: needs nothing but Python, keeps everything in
  memory (docs/design.md §2). The tests' default. Tansu answers a fetch only when its
  wait ends, never when a record arrives (measured: an idle hop takes up to
  ``fetch.max.wait.ms``), so the services are told a short wait for when they are idle
  (``TANSU_FETCH_IDLE_WAIT_MS``) unless the environment sets ``KAFKA_FETCH_IDLE_WAIT_MS``.
* ``kafka`` — Apache Kafka in KRaft mode (``sagastack/apache_kafka.py``; Java 17, jars
  resolved by Maven): one combined node, or a cluster of three (``kafka_nodes=3``). The
  services then use what Kafka offers: an idempotent relay producer
  (``KAFKA_IDEMPOTENT_PRODUCER=true``) and replicated topics
  (``KAFKA_TOPIC_REPLICATION`` = 3 on the cluster). ``make run`` and ``make demo``
  use it when asked (``BROKER=kafka``; ``choose_broker``). With ``kafka_sasl_ssl`` its
  client listener is SASL_SSL (TLS + SCRAM), each service connects as its own user, allowed
  only what its code does (``saga_kit.kafka_acls``, granted as the broker starts), and is
  told how (``KAFKA_SECURITY_PROTOCOL``, …; ``ApacheKafka.client_env``).

Every Kafka client the supervisor opens itself (``publish``, the chaos run) connects as
``System.kafka_security`` says: the embedded broker's administrator, or, with an external broker, the
``KAFKA_SECURITY_*`` settings of the environment (``saga_kit.kafka_security``), which the
services inherit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from events.values import printable
from saga_kit import kafka_acls
from saga_kit.auth import DevIssuer, Role, write_dev_issuer
from saga_kit.headers import Headers
from saga_kit.kafka_security import KafkaClientSettings, KafkaSecurity
from saga_kit.personal_data import write_dev_master_key
from saga_kit.signing import Signer, load_signer, write_dev_keys
from sagastack import kafka_dist
from sagastack.apache_kafka import SASL_USER, ApacheKafka
from sagastack.client import SagaClient
from sagastack.embedded import (
    DATABASES,
    MANIFEST,
    PidFile,
    Postgres,
    RunDirectoryClaim,
    Tansu,
    ensure_port_free,
    ensure_ports_free,
    free_port,
    write_whole,
)
from sagastack.watchdog import Watchdog

log = logging.getLogger(__name__)

#: The consumers' fetch wait on Tansu while they are idle (ms; saga_kit.faust_app.FetchPacer;
#: under load they wait ``KAFKA_FETCH_MAX_WAIT_MS`` and batch). A saga crosses three hops
#: before it is approved, each waiting up to this long on an idle system: 20 ms
#: keeps an idle saga near 90 ms at p50 (100 ms: ~135), for ~150 ms/s more CPU of the
#: idle stack, mostly Tansu's own (docs/benchmark.md, the fetch wait). Apache Kafka
#: answers a fetch as soon as data arrives, so there the services keep a fixed wait.
TANSU_FETCH_IDLE_WAIT_MS = 20

BrokerKind = Literal["tansu", "kafka"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "kafka")


class BadSetting(ValueError):
    """An environment variable of the run (``SAGA_BROKER``, a port) is not one it can use:
    ``python -m sagastack`` says so in one line, naming it, and exits 2 (an operator
    trial: tracebacks, and two services given one port started as if all were well)."""


def broker_from_env(default: BrokerKind = "tansu") -> BrokerKind:
    """``SAGA_BROKER`` if set (``tansu`` or ``kafka``; anything else is ``BadSetting``),
    else ``default``."""
    value = os.environ.get("SAGA_BROKER", "").strip().lower()
    if not value:
        return default
    if value not in BROKER_KINDS:
        raise BadSetting(f"SAGA_BROKER must be one of {', '.join(BROKER_KINDS)}, not {value!r}")
    return "kafka" if value == "kafka" else "tansu"


def choose_broker() -> tuple[BrokerKind, str | None]:
    """The broker of ``make run`` and ``make demo``: ``SAGA_BROKER`` (``make BROKER=``) if
    set, else Tansu, which needs nothing but Python. Asked for Apache Kafka on a machine
    without Java 17+ or without Maven to fetch its jars, it falls back to Tansu. Returns the
    choice and, when it fell back, one line saying why (for the caller to print)."""
    asked = broker_from_env()
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or asked == "tansu":
        return asked, None
    lacking = kafka_dist.missing()
    if lacking is not None:
        return "tansu", f"{lacking} not found to run Apache Kafka: using the embedded Tansu broker instead"
    return "kafka", None


def choose_secure_broker() -> BrokerKind:
    """The broker of ``make run SECURE=1``: the embedded Apache Kafka, whose client
    listener is SASL_SSL with each service its own user (``kafka_sasl_ssl``). Raises
    ``BadSetting`` where it cannot be: ``SAGA_BROKER=tansu`` (Tansu has no TLS listener
    here), an external broker (``KAFKA_BOOTSTRAP_SERVERS``: its own ``KAFKA_SECURITY_*``
    settings say how to connect), or no Java 17+ or Maven to run Kafka."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise BadSetting(
            "SECURE=1 runs the embedded Apache Kafka over SASL_SSL; with an external broker"
            " (KAFKA_BOOTSTRAP_SERVERS) set KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_* instead"
        )
    if broker_from_env("kafka") != "kafka":
        raise BadSetting("SECURE=1 needs Apache Kafka (BROKER=kafka): Tansu has no TLS listener here")
    lacking = kafka_dist.missing()
    if lacking is not None:
        raise BadSetting(f"SECURE=1 needs Apache Kafka: {lacking} not found to run it")
    return "kafka"


SERVICES: dict[str, tuple[str, int]] = {
    # name: (settings prefix, default port)
    "order_svc": ("ORDER", 8001),
    "inventory_svc": ("INVENTORY", 8002),
    "payment_svc": ("PAYMENT", 8003),
}


def instance_key(service: str, n: int) -> str:
    """The name of a service's ``n``-th instance (1-based) among ``System.services``: the
    service's own name for the first, ``payment_svc#2`` and so on for the others."""
    return service if n == 1 else f"{service}#{n}"


def service_of(key: str) -> str:
    """The service an instance key belongs to (``payment_svc#2`` → ``payment_svc``)."""
    return key.partition("#")[0]


#: The card processor's simulator: an external system to the saga (not one of SERVICES),
#: started before the services because the payment service calls it.
PROVIDER = "payment_provider"
PROVIDER_PORT = 8004


def server_down(server: str, again: str) -> str:
    """What a kept-running system (``make run``, a kept demo) says when its broker or
    database stops. Apache Kafka's nodes and PostgreSQL keep their data on disk and are
    started again (``System.keep_running``); Tansu kept its log in memory, and one started
    under running services would not make them publish again what it lost (they do that
    as they start), so the run must be started anew. ``again``: the command that does."""
    if server != "tansu":
        return f"{server} has stopped; starting it again (its data is on disk and is kept)"
    return (
        f"{server} has stopped; the services wait for it (their /health/ready says so)."
        " Tansu kept its topics in memory: they are gone. Stop this run (Ctrl-C) and start it"
        f" again ({again}): the services then publish again what they sent in the last hour."
    )


def exited(name: str, code: int, reason: Callable[[str], str]) -> str:
    """How a kept-running system says a process of its ended: ``payment_svc exited (1): …``
    with the reason its log gives (``reason``), or ``payment_svc was killed (SIGKILL)``
    when a signal ended it (a negative ``code``, as ``subprocess`` gives it; it has no
    reason of its own to give). An operator trial read ``exited (-9)`` as an exit code.
    Exit 0 is a service's clean shutdown, which only a signal from outside asks for (a
    newcomer trial read ``exited (0)`` of a SIGTERM as a service that quit by itself)."""
    if code == 0:
        return f"{name} shut down cleanly (exit 0: stopped from outside, e.g. by SIGTERM)"
    if code > 0:
        return f"{name} exited ({code}){reason(name)}"
    try:
        sig = signal.Signals(-code).name
    except ValueError:  # a signal this platform has no name for
        sig = f"signal {-code}"
    return f"{name} was killed ({sig})"


def port_from_env(variable: str, default: int) -> int:
    """The port ``variable`` gives in the environment, else ``default``. Raises
    ``BadSetting`` naming the variable if it is not a port number (1 to 65535)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise BadSetting(f"{variable}={value!r} is not a port number (1-65535)")
    return int(value)


def chosen_port(prefix: str, default: int) -> int:
    """The HTTP port of the service whose settings prefix is ``prefix`` (``ORDER``,
    ``PROVIDER`` …): ``<prefix>_HTTP_PORT`` from the environment, as the README's settings
    table says, else ``default`` (``port_from_env``)."""
    return port_from_env(f"{prefix}_HTTP_PORT", default)


#: The broker's port when ``SAGA_KAFKA_PORT`` does not say (``make run``'s).
KAFKA_PORT = 9092


def last_error(log: str) -> str:
    """The last error in ``log`` (a service's JSON lines, ``saga_kit.logs``): its message,
    and the last line of its exception's, at most 300 printable characters; ``""`` when
    it has none."""
    why = ""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            exc = str(entry.get("exc") or "").strip().splitlines()
            why = str(entry.get("msg", "")) + (f" ({exc[-1]})" if exc else "")
    return printable(why, 300)


#: A restarted process that exits again within this many seconds of its start makes the
#: next restart wait (``System.keep_running``), twice as long each time up to the maximum.
RESTART_QUICK_EXIT_SECONDS = 10.0
RESTART_BACKOFF_MAX_SECONDS = 30.0


@dataclass
class _Restart:
    """One process's restarts under ``System.keep_running``."""

    #: when it was last started again (monotonic seconds), None before that
    started_at: float | None = None
    #: when the next start is due, None while it runs
    due: float | None = None
    #: the wait before the next start if it exits quickly again
    backoff: float = 0.0
    #: started again, not yet ready
    waiting_ready: bool = False

    def delay_after(self, now: float) -> float:
        """When to start it again, having found it exited at ``now``."""
        quick = self.started_at is not None and now - self.started_at < RESTART_QUICK_EXIT_SECONDS
        self.backoff = min(RESTART_BACKOFF_MAX_SECONDS, max(1.0, self.backoff * 2)) if quick else 0.0
        return now + self.backoff

    def started(self, now: float) -> None:
        self.started_at, self.due, self.waiting_ready = now, None, True


def _said(line: str) -> None:
    """A line of what a kept-running system saw (``System.keep_running``), after the time
    of day it saw it: an operator trial could not time an outage from ``make run``'s
    output alone."""
    print(f"{datetime.now():%H:%M:%S} {line}", flush=True)


def _ready(probe: httpx.Client, url: str) -> bool:
    """Does the service at ``url`` answer 200 on /health/ready (``probe``'s timeout)?"""
    try:
        return probe.get(f"{url}/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Where this process's lines begin in ``log_path`` (appended to across runs).
    log_start: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class StartFailed(RuntimeError):
    """A service or the provider simulator exited while the system started, or was not
    ready in time; the message names it, its exit code (2: its settings; 1: a dependency
    it gave up on) and its log since it started."""


def private_directory(path: Path) -> Path:
    """``path``, a directory only its owner may use (0700), made so if it exists with
    another mode: a run directory's ``xdg`` found 0755 (made again by a process of a run
    whose directory was removed under it) had every later run's PostgreSQL warn and fall
    back to ``/tmp/runtime-<uid>``, shared by every stack on the machine (a trial)."""
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


@dataclass
class System:
    run_dir: Path
    #: Take free ports instead of the defaults (tests, demo and bench run beside `make run`).
    free_ports: bool = False
    #: Start from empty databases (the demo, tests); `make run` keeps its data.
    fresh: bool = False
    #: Extra environment per service, e.g. {"order_svc": {"SAGA_FAULT": "relay.before_publish"}}.
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Which embedded broker to start (None: ``SAGA_BROKER``, else Tansu). Ignored when
    #: ``KAFKA_BOOTSTRAP_SERVERS`` names an external one.
    broker_kind: BrokerKind | None = None
    #: Apache Kafka only: 1 combined node, or a cluster of 3 (replication 3, min ISR 2).
    kafka_nodes: int = 1
    #: Apache Kafka only: its client listener is SASL_SSL (``ApacheKafka(sasl_ssl=True)``).
    kafka_sasl_ssl: bool = False
    #: How Kafka clients connect to ``bootstrap``, once ``start`` chose the broker.
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: The embedded broker, once started (None with an external one).
    broker: Tansu | ApacheKafka | None = None
    postgres: Postgres | None = None
    bootstrap: str = ""
    database_urls: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    #: The payment provider the payment service calls (``PAYMENT_PROVIDER_URL``): the
    #: simulator's URL, or the real provider's when that variable was set.
    provider_url: str = ""
    #: The simulator's process (None with a real provider) and its database.
    provider: ServiceProcess | None = None
    provider_database_url: str = ""
    #: the development keys' trust file (saga_kit.signing), made by ``start``
    trust_file: Path | None = None
    #: False: services neither sign nor verify events (to measure what signing costs)
    signing: bool = True
    #: the development token issuer (saga_kit.auth), made by ``start``: every service
    #: checks bearer tokens against its JWKS; ``token`` mints them
    issuer: DevIssuer | None = None
    #: Options of the embedded PostgreSQL server (``Postgres.options``), e.g. to preload
    #: ``pg_stat_statements`` (``bench --db-statements``).
    postgres_options: tuple[str, ...] = ()
    #: Processes per service (one consumer group, one database, each its own port): the
    #: first is ``System.url(service)``, the others ``service#2``, … (``instance_key``).
    instances: int = 1
    _http: httpx.Client | None = field(default=None, init=False, repr=False)
    _claim: RunDirectoryClaim | None = field(default=None, init=False, repr=False)
    _made_run_dir: Path | None = field(default=None, init=False, repr=False)
    _watchdog: Watchdog | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.broker_kind is None:
            self.broker_kind = broker_from_env()
        if self.broker_kind not in BROKER_KINDS:
            raise ValueError(f"broker_kind must be one of {BROKER_KINDS}, not {self.broker_kind!r}")
        if self.kafka_sasl_ssl and self.broker_kind != "kafka":
            raise ValueError("kafka_sasl_ssl needs Apache Kafka (broker_kind='kafka')")
        self.run_dir = self.run_dir.resolve()
        # the outermost directory this makes (None: the run directory was there)
        self._made_run_dir = next(
            (d for d in reversed([self.run_dir, *self.run_dir.parents]) if not d.exists()), None
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pids = PidFile(self.run_dir / "pids.json")

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self.start_servers()
        try:
            if not self.provider_url:
                self.start_provider()
            keys = [instance_key(name, n) for n in range(1, self.instances + 1) for name in SERVICES]
            for key in keys:
                self.start_service(key, wait=False)
            for key in keys:
                self.wait_ready(key)
            self.write_manifest()
        except BaseException:
            self.stop()
            raise

    def write_manifest(self) -> None:
        """Write ``MANIFEST`` in the run directory: what this run serves, for tools beside
        it (``python -m sagastack check``). JSON: ``database_urls`` (service → SQLAlchemy
        URL), ``provider_url``, ``provider_simulated`` (False: a real provider, whose ledger
        is not ours to read), ``services`` (instance → base URL). Readable by its owner
        only (a database URL may hold a password); ``stop`` removes it."""
        manifest = {
            "database_urls": self.database_urls,
            "provider_url": self.provider_url,
            "provider_simulated": self.provider is not None,
            "services": {key: sp.url for key, sp in self.services.items()},
        }
        # whole or not at all: a check reading it mid-write saw an empty file (an attack trial)
        write_whole(self.run_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n", mode=0o600)

    def claim(self) -> None:
        """Make this system the run directory's one owner until ``stop``, or raise
        ``RunDirectoryInUse`` naming the live run that owns it (``start`` claims it first)."""
        if self._claim is None:
            self._claim = RunDirectoryClaim(self.run_dir)

    def give_up(self) -> None:
        """Let go of a run directory claimed (``claim``) for a start refused before anything
        started (a port taken, a bad setting): the claim released and, when this system made
        the directory, the directory removed if its claim is all it holds, with the parents
        it made for it. A second ``make run`` refused so used to leave a directory with only
        ``owner.lock`` in it (a trial)."""
        self.stop()
        if self._made_run_dir is not None and [p.name for p in self.run_dir.iterdir()] == ["owner.lock"]:
            (self.run_dir / "owner.lock").unlink()
            for made in [self.run_dir, *self.run_dir.parents]:  # and the parents it made (a trial)
                try:
                    made.rmdir()
                except OSError:  # something else was put there meanwhile: it stays
                    break
                if made == self._made_run_dir:
                    break

    def stop_leftovers(self) -> None:
        """Stop what an earlier run in this directory left running (its supervisor killed,
        and its watchdog too), saying so; the directory must be claimed (``claim``)."""
        assert self._claim is not None, "claim the run directory first"
        for leftover in self.pids.stop_leftovers():
            log.warning("stopped %s left running by an earlier run", leftover)

    def start_servers(self) -> None:
        """The first half of ``start``: the development keys, the broker and the databases
        (``bootstrap``, ``postgres``, ``database_urls``), but neither the provider simulator
        nor a service — for a caller that starts those its own way (``start_command``).
        ``stop`` stops whatever was started; on an error everything is stopped again."""
        (self.run_dir / "logs").mkdir(exist_ok=True)
        xdg = private_directory(self.run_dir / "xdg")
        os.environ.setdefault("XDG_RUNTIME_DIR", str(xdg))
        self.claim()
        (self.run_dir / MANIFEST).unlink(missing_ok=True)  # a killed run's, if any: not ours
        if self._watchdog is None:  # stops what this run starts if it dies without stopping it
            self._watchdog = Watchdog(self.run_dir)
        self.stop_leftovers()
        if self.fresh:
            shutil.rmtree(self.run_dir / "pgdata", ignore_errors=True)
            shutil.rmtree(self.run_dir / "traces", ignore_errors=True)
        self.trust_file = write_dev_keys(self.run_dir / "keys", SERVICES)
        self.issuer = write_dev_issuer(self.run_dir / "keys" / "issuer")
        write_dev_master_key(self.run_dir / "keys" / "pii-master.json")
        # a real provider: start no simulator, pass its URL on
        self.provider_url = os.environ.get("PAYMENT_PROVIDER_URL", "")
        try:
            self.check_ports()
            self._start_broker()
            self._start_databases()
        except BaseException:
            self.stop()
            raise

    def check_ports(self) -> None:
        """Raise ``BadSetting`` naming two variables that give one port (an operator trial:
        two services on one port, and the one that could not bind restarted forever while
        the other answered its health checks), and ``PortTaken`` naming each port of this
        run another process holds (with that process, and the variable that moves it), before anything
        starts: a newcomer trial found each taken port only once everything else had
        started, one run at a time, at the end of the service's log."""
        if self.free_ports:
            return
        wanted = [
            (f"{name}'s HTTP", f"{prefix}_HTTP_PORT", port) for name, (prefix, port) in SERVICES.items()
        ]
        if not self.provider_url:
            wanted.append(("the payment provider simulator's HTTP", "PROVIDER_HTTP_PORT", PROVIDER_PORT))
        if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            wanted.append(("the broker's", "SAGA_KAFKA_PORT", KAFKA_PORT))

        def named(variable: str) -> str:
            return variable if os.environ.get(variable, "").strip() else f"{variable} (unset: its default)"

        taken: dict[int, str] = {}
        for _, variable, default in wanted:
            port = port_from_env(variable, default)
            if port in taken:
                raise BadSetting(
                    f"{named(taken[port])} and {named(variable)} give one port, {port}: each needs its own"
                )
            taken[port] = variable
        # the broker's too, though checked again as it starts: a newcomer trial's second
        # run was told of the four HTTP ports its first held, and then of the broker's
        ensure_ports_free(
            [(port_from_env(variable, default), what, variable) for what, variable, default in wanted]
        )

    def _start_broker(self) -> None:
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external:
            self.bootstrap = external
            self.kafka_security = KafkaClientSettings().kafka_security()
            return
        port = free_port() if self.free_ports else port_from_env("SAGA_KAFKA_PORT", KAFKA_PORT)
        # a broker already there would answer for ours, which could not bind: the services
        # would join it, and the run's own broker would die unnoticed
        ensure_port_free(port, "the broker's", "SAGA_KAFKA_PORT")
        if self.broker_kind == "kafka":
            kafka = ApacheKafka(
                self.run_dir / "kafka",
                nodes=self.kafka_nodes,
                port=port,
                log_dir=self.run_dir / "logs",
                pid_file=self.pids,  # records kafka-<n> at every (re)start of a node
                fresh=self.fresh,
                sasl_ssl=self.kafka_sasl_ssl,
                sasl_users=(*SERVICES, kafka_acls.COMMAND_SENDER) if self.kafka_sasl_ssl else (),
            )
            self.broker = kafka
            kafka.start()
            if self.kafka_sasl_ssl:  # each service its own user, allowed only what it does
                kafka.grant(kafka_acls.plan())
            self.kafka_security = kafka.client_security
        else:
            self.broker = Tansu(port, self.run_dir / "logs" / "tansu.log", pid_file=self.pids)
            self.broker.start()  # recorded as it is spawned, forgotten as it stops
        self.bootstrap = self.broker.bootstrap

    def broker_env(self, user: str = SASL_USER) -> dict[str, str]:
        """What the services are told about the broker System started: on Apache Kafka,
        an idempotent producer, the cluster's replication factor, and how to connect (as
        ``user``: a service's own, with ``kafka_sasl_ssl``; the administrator's by default); on
        Tansu, a short fetch wait while idle (``TANSU_FETCH_IDLE_WAIT_MS``) unless the
        environment chose one, or chose a busy wait no longer than that (then it is fixed)."""
        if isinstance(self.broker, ApacheKafka):
            return {
                "KAFKA_IDEMPOTENT_PRODUCER": "true",
                "KAFKA_TOPIC_REPLICATION": str(self.broker.replication),
                **self.broker.client_env(user),
            }
        if isinstance(self.broker, Tansu):
            chosen = os.environ.get("KAFKA_FETCH_IDLE_WAIT_MS")
            if chosen is not None:
                return {"KAFKA_FETCH_IDLE_WAIT_MS": chosen}
            busy = os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", "")
            if busy.isdigit() and int(busy) <= TANSU_FETCH_IDLE_WAIT_MS:
                return {}  # the environment chose a wait this short already: it stays fixed
            return {"KAFKA_FETCH_IDLE_WAIT_MS": str(TANSU_FETCH_IDLE_WAIT_MS)}
        return {}

    def broker_description(self) -> str:
        """One line naming the broker in use, e.g. for ``make run``'s banner."""
        if isinstance(self.broker, ApacheKafka):
            nodes = len(self.broker.nodes)
            return (
                f"Apache Kafka {kafka_dist.KAFKA_VERSION} (KRaft, {nodes} node{'s' if nodes > 1 else ''})"
                f" at {self.bootstrap}{' (SASL_SSL)' if self.broker.sasl_ssl else ''}"
            )
        if isinstance(self.broker, Tansu):
            return f"Tansu (embedded) at {self.bootstrap}"
        return f"external at {self.bootstrap}"

    def broker_pids(self) -> dict[str, int]:
        """Name → pid of every running process of the embedded broker (none if external)."""
        if isinstance(self.broker, ApacheKafka):
            return self.broker.pids()
        if self.broker is not None and self.broker.proc is not None and self.broker.proc.poll() is None:
            return {"broker": self.broker.proc.pid}
        return {}

    def _start_databases(self) -> None:
        for name, (prefix, _) in SERVICES.items():
            external = os.environ.get(f"{prefix}_DATABASE_URL")
            if external:
                self.database_urls[name] = external
        missing = [n for n in SERVICES if n not in self.database_urls]
        simulator = not self.provider_url
        if simulator:
            self.provider_database_url = os.environ.get("PROVIDER_DATABASE_URL", "")
        provider_missing = simulator and not self.provider_database_url
        if not missing and not provider_missing:
            return
        self.postgres = Postgres(self.run_dir / "pgdata", self.postgres_options)
        self.pids.add("postgres", self.postgres.start())
        for name in missing:
            self.database_urls[name] = self.postgres.url(DATABASES[name])
        if provider_missing:
            self.provider_database_url = self.postgres.url(DATABASES[PROVIDER])

    def start_provider(self, *, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start the card processor's simulator (``python -m payment_provider``) with fault
        control on — or start it again after ``kill_provider``, on the same port, with its
        faults back to ``PROVIDER_FAULTS`` (they live in its memory). Its log is
        ``logs/payment_provider.log``; extra environment from ``service_env`` and ``env``."""
        previous = self.provider
        if previous is not None and previous.proc is not None and previous.proc.poll() is None:
            self.stop_service(PROVIDER)  # never two, nor an orphan nobody stops
        port = (
            previous.port
            if previous
            else (free_port() if self.free_ports else chosen_port("PROVIDER", PROVIDER_PORT))
        )
        provider_env = {
            **os.environ,
            "PROVIDER_DATABASE_URL": self.provider_database_url,
            "PROVIDER_HTTP_HOST": "127.0.0.1",
            "PROVIDER_HTTP_PORT": str(port),
            # the dev/test runtime: tests and chaos runs inject the provider's faults
            "PROVIDER_FAULT_CONTROL": "true",
            "PYTHONUNBUFFERED": "1",
            **self.service_env.get(PROVIDER, {}),
            **(env or {}),
        }
        sp = self._launch(PROVIDER, [sys.executable, "-m", PROVIDER], port, provider_env)
        self.provider = sp
        self.provider_url = sp.url
        if wait:
            self.wait_ready(PROVIDER)

    def kill_provider(self, sig: int = signal.SIGKILL) -> int | None:
        """SIGKILL the simulator (a crash; ``start_provider`` brings it back); return its
        exit code."""
        return self.stop_service(PROVIDER, sig)

    def provider_faults(self, **faults: object) -> dict[str, Any]:
        """Set the simulator's faults (``PUT /v1/faults``): ``latency_ms``, ``error_rate``,
        ``timeout_rate``, ``timeout_ms``, ``outage``, ``lose_response_rate``, ``seed``;
        every one not named is reset, so ``provider_faults()`` turns them all off. Returns
        the faults now in force with ``injected``, the count of each fault so far."""
        response = httpx.put(f"{self.provider_url}/v1/faults", json=faults, timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def provider_fault_counts(self) -> dict[str, Any]:
        """The simulator's faults in force and ``injected`` (``GET /v1/faults``)."""
        response = httpx.get(f"{self.provider_url}/v1/faults", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def start_service(self, name: str, *, wait: bool = True, env: dict[str, str] | None = None) -> None:
        """Start a service, or one instance of it (``name`` as ``instance_key`` makes it)."""
        key, name = name, service_of(name)
        prefix, default_port = SERVICES[name]
        previous = self.services.get(key)
        if previous is not None and previous.proc is not None and previous.proc.poll() is None:
            self.stop_service(key)  # never two of one instance, nor an orphan nobody stops
        first_port = chosen_port(prefix, default_port) if key == name and not self.free_ports else free_port()
        port = previous.port if previous else first_port
        service_env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            **self.broker_env(name if self.kafka_sasl_ssl else SASL_USER),
            f"{prefix}_DATABASE_URL": self.database_urls[name],
            f"{prefix}_HTTP_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            # traces of every saga as JSON lines under the run directory, unless the
            # environment chose an exporter (e.g. TRACING_EXPORTER=otlp)
            "TRACING_EXPORTER": os.environ.get("TRACING_EXPORTER", "file"),
            "TRACING_DIR": os.environ.get("TRACING_DIR", str(self.run_dir / "traces")),
            "SAGA_DATA_DIR": str(self.run_dir / "data" / key.replace("#", "-")),
            **self._signing_env(name, prefix),
            "AUTH_JWKS_FILE": str(self.issuer.jwks_file) if self.issuer else "",
            # the run's development key, unless the environment names one (a rotation by hand)
            "ORDER_PII_MASTER_KEY_FILE": os.environ.get(
                "ORDER_PII_MASTER_KEY_FILE", str(self.run_dir / "keys" / "pii-master.json")
            ),
            **self._neighbours(name),
            **self._provider_env(name),
            **self.service_env.get(name, {}),
            **(env or {}),
        }
        self.services[key] = self._launch(key, [sys.executable, "-m", name], port, service_env)
        if wait:
            self.wait_ready(key)

    def start_command(
        self, key: str, command: Sequence[str], port: int, env: Mapping[str, str], *, cwd: Path | None = None
    ) -> ServiceProcess:
        """Start ``command`` (an argv list) as one of this system's services under ``key``,
        serving HTTP on 127.0.0.1:``port``, with exactly ``env`` (nothing inherited) in
        ``cwd`` — e.g. a service run the way a container runs it. ``url``, ``wait_ready``,
        ``log_tail``, ``stop_service`` and ``stop`` then treat it like any other service."""
        sp = self._launch(key, command, port, dict(env), cwd=cwd)
        self.services[key] = sp
        return sp

    def _launch(
        self, key: str, command: Sequence[str], port: int, env: dict[str, str], *, cwd: Path | None = None
    ) -> ServiceProcess:
        """``command`` as a child in its own session, its output appended to
        ``logs/<key>.log``, marked as this run's ``key`` and its pid recorded under it (so
        the watchdog, or a later run, stops it if this one dies: ``PidFile``)."""
        sp = ServiceProcess(key, port, env, self.run_dir / "logs" / f"{key.replace('#', '-')}.log")
        sp.log_path.parent.mkdir(exist_ok=True)
        with open(sp.log_path, "ab") as out:
            sp.log_start = out.tell()
            sp.proc = subprocess.Popen(
                list(command),
                env=self.pids.mark(key, env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pids.add(key, sp.proc.pid)
        return sp

    def _signing_env(self, name: str, prefix: str) -> dict[str, str]:
        """The development signing keys ``start`` made (saga_kit.signing); empty values
        (nothing signed, nothing verified) when ``signing`` is off."""
        keys = self.run_dir / "keys"
        on = self.signing
        return {
            f"{prefix}_EVENT_SIGNING_KEY_FILE": str(keys / f"{name}.pem") if on else "",
            f"{prefix}_EVENT_SIGNING_KID": (keys / f"{name}.kid").read_text().strip() if on else "",
            "EVENT_TRUST_FILE": str(self.trust_file) if on else "",
        }

    def _neighbours(self, name: str) -> dict[str, str]:
        """The order service's dashboard reads stock and balances from the other two."""
        if name != "order_svc":
            return {}
        urls = {}
        for other, var in (("inventory_svc", "ORDER_INVENTORY_URL"), ("payment_svc", "ORDER_PAYMENT_URL")):
            if other not in self.services:  # ports are chosen at first start: take them now
                prefix, default_port = SERVICES[other]
                port = free_port() if self.free_ports else chosen_port(prefix, default_port)
                self.services[other] = ServiceProcess(other, port, {}, self.run_dir / "logs" / f"{other}.log")
            urls[var] = self.services[other].url
        return urls

    def _provider_env(self, name: str) -> dict[str, str]:
        """The payment service calls the card processor."""
        if name != "payment_svc" or not self.provider_url:
            return {}
        return {"PAYMENT_PROVIDER_URL": self.provider_url}

    def _process(self, name: str) -> ServiceProcess | None:
        """A service's process, or the provider simulator's (``PROVIDER``)."""
        return self.provider if name == PROVIDER else self.services.get(name)

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the service (or ``PROVIDER``) answers 200 on /health/ready."""
        sp = self._process(name)
        if sp is None:
            raise KeyError(name)
        end = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                assert sp.proc is not None
                if sp.proc.poll() is not None:
                    raise StartFailed(
                        f"{name} exited with {sp.proc.returncode} while starting; its log:\n"
                        + self.log_tail(name, since_start=True)
                    )
                if _ready(client, sp.url):
                    return
                if time.monotonic() > end:
                    raise StartFailed(
                        f"{name} not ready after {timeout:.0f} s; its log:\n"
                        + self.log_tail(name, since_start=True)
                    )
                time.sleep(0.1)

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig`` (SIGKILL simulates a crash) to the service (or ``PROVIDER``) and
        wait; return the exit code."""
        sp = self._process(name)
        if sp is None or sp.proc is None:
            return None
        if sp.proc.poll() is None:
            sp.proc.send_signal(sig)
            try:
                sp.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                sp.proc.kill()
                sp.proc.wait()
        self.pids.remove(name)
        return sp.proc.returncode

    def restart_database(self) -> None:
        """Restart the embedded PostgreSQL (fast shutdown: open connections are cut)."""
        if self.postgres is None:
            raise RuntimeError("the database is external; restart it where it runs")
        self.pids.add("postgres", self.postgres.restart())

    def stop(self) -> None:
        if self._claim is not None:  # ours (a run that could not claim the directory has none)
            (self.run_dir / MANIFEST).unlink(missing_ok=True)  # from now on nothing is there to check
        if self._http is not None:
            self._http.close()
            self._http = None
        for sp in self.services.values():  # all at once; each shuts down on its own
            if sp.proc is not None and sp.proc.poll() is None:
                sp.proc.send_signal(signal.SIGTERM)
        for name in reversed(list(self.services)):
            self.stop_service(name)
        self.stop_service(PROVIDER)  # after the services: the payment service calls it
        if self.postgres is not None:
            self.postgres.stop()
            self.pids.remove("postgres")
        if self.broker is not None:
            self.broker.stop()  # forgets its pids itself
        if self._watchdog is not None:
            self._watchdog.dismiss()
            self._watchdog = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def keep_running(self, stop: threading.Event, again: str) -> None:
        """Until ``stop`` is set (or Ctrl-C): start again a service or the provider simulator
        that exited, saying so, and say when it is ready again; start again an Apache Kafka
        node or the database that stopped, on their data (and say when the cluster lists
        the node again: an operator trial timed recoveries from the node's log, told only
        that its process had started), and say once when Tansu stops,
        which cannot come back with its log (``server_down``). ``again``: the command that
        starts the run anew.

        A restart does not wait for the process to be ready: it may wait for a broker or
        database that is down (up to its ``STARTUP_TIMEOUT_SECONDS``), and the others go
        on being watched meanwhile (a restart that waited took the whole run down after
        120 s while the broker was away: an operator trial). One that exits again within
        ``RESTART_QUICK_EXIT_SECONDS`` of its start waits before the next, twice as long
        each time up to ``RESTART_BACKOFF_MAX_SECONDS``."""
        told: set[str] = set()
        restarts: dict[str, _Restart] = {}
        with httpx.Client(timeout=0.5) as probe:
            while not stop.wait(0.5):
                down = self.servers_down()
                # the cluster asked once for every node started again and not yet said ready
                nodes = [
                    s
                    for s, r in restarts.items()
                    if r.waiting_ready and s.startswith("kafka-") and s not in down
                ]
                if nodes and isinstance(self.broker, ApacheKafka) and self.broker.answers(0.5):
                    for server in nodes:
                        restarts[server].waiting_ready = False
                        _said(f"{server} is ready again")
                for server in down:
                    if server == "tansu":
                        if server not in told:
                            told.add(server)
                            _said(server_down(server, again))
                        continue
                    again_at = restarts.setdefault(server, _Restart())
                    if again_at.due is None:
                        again_at.due = again_at.delay_after(time.monotonic())
                        _said(server_down(server, again))
                    if time.monotonic() >= again_at.due:
                        try:
                            self._start_server_again(server)
                        except Exception as exc:  # e.g. a killed database's backends still there
                            why = f"{server} could not be started again yet ({type(exc).__name__})"
                            _said(f"{why}; trying again")
                            again_at.started(time.monotonic())
                            again_at.due = again_at.delay_after(time.monotonic())
                        else:
                            again_at.started(time.monotonic())
                            # a node answers a while after its process starts: said then
                            again_at.waiting_ready = server.startswith("kafka-")
                            _said(f"{server} started again")
                processes = {**self.services, **({PROVIDER: self.provider} if self.provider else {})}
                for name, sp in processes.items():
                    if sp.proc is None:
                        continue
                    restart = restarts.get(name)
                    if sp.proc.poll() is None:
                        if restart is not None and restart.waiting_ready and _ready(probe, sp.url):
                            restart.waiting_ready = False
                            _said(f"{name} is ready again")
                        continue
                    if restart is None:
                        restart = restarts[name] = _Restart()
                    if restart.due is None:
                        restart.due = restart.delay_after(time.monotonic())
                        wait = restart.due - time.monotonic()
                        later = f" in {wait:.0f} s (it exited again as it started)" if wait > 0 else ""
                        if name == PROVIDER:  # an operator trial: its faults quietly gone
                            later += "; the faults PUT /v1/faults set are gone: it starts from"
                            later += " PROVIDER_FAULTS"
                        _said(f"{exited(name, sp.proc.returncode, self.exit_reason)}; restarting{later}")
                    if time.monotonic() >= restart.due:
                        if name == PROVIDER:
                            self.start_provider(wait=False)
                        else:
                            self.start_service(name, wait=False)
                        restart.started(time.monotonic())

    def _start_server_again(self, server: str) -> None:
        """Start a stopped Apache Kafka node (``kafka-<n>``) or the embedded PostgreSQL
        again, on its data; the node is not waited for, the database is (briefly)."""
        if server.startswith("kafka-") and isinstance(self.broker, ApacheKafka):
            self.broker.restart(int(server.removeprefix("kafka-")), wait=False)  # records its pid
        elif server == "postgres" and self.postgres is not None:
            self.pids.add("postgres", self.postgres.recover())
        else:
            raise RuntimeError(f"{server} is not one this run started")

    def servers_down(self) -> list[str]:
        """The broker nodes and database server this system started that have stopped
        running (``tansu``, ``kafka-<n>``, ``postgres``): a supervisor restarts services,
        not these, whose loss it must report."""
        names = ["postgres", "tansu", *(f"kafka-{n}" for n in range(1, self.kafka_nodes + 1))]
        return self.pids.gone(names)

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------
    def stack_pids(self) -> dict[str, int]:
        """Pid of every process this system started: services, the provider simulator,
        broker, database (whose backends are its children)."""
        processes = [*self.services.values(), *([self.provider] if self.provider else [])]
        pids = {sp.name: sp.proc.pid for sp in processes if sp.proc and sp.proc.poll() is None}
        pids.update(self.broker_pids())
        if self.postgres is not None:
            pids["postgres"] = self.postgres.pid()
        return pids

    def token(
        self, subject: str = "operator", roles: Iterable[Role | str] = (Role.OPERATOR,), **claims: Any
    ) -> str:
        """A bearer token from the development issuer ``start`` made (``DevIssuer.mint``
        takes ``ttl_seconds``, ``issuer``, ``audience``, ``not_before``)."""
        if self.issuer is None:
            raise RuntimeError("the system has not started: no token issuer yet")
        return self.issuer.mint(subject, roles, **claims)

    def auth(
        self, subject: str = "operator", roles: Iterable[Role | str] = (Role.OPERATOR,)
    ) -> dict[str, str]:
        """The ``Authorization`` header of a token for ``subject`` with ``roles``."""
        return {"Authorization": f"Bearer {self.token(subject, roles)}"}

    @property
    def http(self) -> httpx.Client:
        """An HTTP client that calls as the operator (for tools and tests)."""
        if self._http is None:
            self._http = httpx.Client(headers=self.auth(), timeout=10.0)
        return self._http

    def client(self, customer: str | None = None) -> SagaClient:
        """A ``SagaClient`` of the three services, calling as the operator, or as the
        customer ``customer``."""
        token = self.token(customer, (Role.CUSTOMER,)) if customer else self.token()
        return SagaClient(
            self.url("order_svc"), self.url("inventory_svc"), self.url("payment_svc"), token=token
        )

    def signer(self, name: str) -> Signer:
        """The development signing key ``start`` made for service ``name``."""
        keys = self.run_dir / "keys"
        return load_signer(keys / f"{name}.pem", (keys / f"{name}.kid").read_text().strip())

    def publish(
        self,
        records: Iterable[tuple[str, bytes | None, bytes]],
        *,
        signed_by: str | None = None,
        headers: Headers = (),
    ) -> None:
        """Produce ``(topic, key, value)`` records as they are, acked by the broker, in order;
        with ``signed_by`` each is signed with that service's key, as if that service sent it
        (saga_kit.signing), after ``headers``. For tests and tools that inject events."""
        import asyncio

        from aiokafka import AIOKafkaProducer

        signer = self.signer(signed_by) if signed_by else None

        async def go() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", **self.kafka_security.client_kwargs()
            )
            await producer.start()
            try:
                for topic, key, value in records:
                    extra = signer.headers(topic, key, value) if signer else []
                    await producer.send_and_wait(topic, value=value, key=key, headers=[*headers, *extra])
            finally:
                await producer.stop()

        asyncio.run(go())

    def url(self, name: str) -> str:
        """The HTTP base URL of a service (or of the provider simulator, ``PROVIDER``)."""
        sp = self._process(name)
        if sp is None:
            raise KeyError(name)
        return sp.url

    def sagactl_env(self) -> dict[str, str]:
        """What ``sagactl`` needs to reach this system: each service's URL
        (``SAGACTL_<SVC>_URL``) and the broker, for ``--via kafka``
        (``SAGACTL_KAFKA_BOOTSTRAP``); with ``kafka_sasl_ssl``, how to connect as the
        command sender (``saga-client``, ``KAFKA_SECURITY_PROTOCOL``, …), who may write
        commands and nothing else."""
        env = {f"SAGACTL_{prefix}_URL": self.url(n) for n, (prefix, _) in SERVICES.items()}
        env["SAGACTL_KAFKA_BOOTSTRAP"] = self.bootstrap
        if isinstance(self.broker, ApacheKafka) and self.broker.sasl_ssl:
            env.update(self.broker.client_env(kafka_acls.COMMAND_SENDER))
        return env

    def exit_reason(self, name: str) -> str:
        """``": <why>"`` (``last_error`` of what the process of ``name`` logged), or ``""``:
        a supervisor restarting a service that exited on its own says why (an operator
        trial: the reason was only in the service's log). Not asked for a process a signal
        killed: its last error may be long past and unrelated (a second trial)."""
        why = last_error(self.log_tail(name, lines=200, since_start=True))
        return f": {why}" if why else ""

    def log_tail(self, name: str, lines: int = 30, *, since_start: bool = False) -> str:
        """The last ``lines`` of the service's log; with ``since_start``, of what its
        current process wrote only (the file keeps earlier runs' lines)."""
        sp = self._process(name)
        try:
            if sp is None:
                raise OSError(name)
            with open(sp.log_path, "rb") as log_file:
                log_file.seek(sp.log_start if since_start else 0)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"
