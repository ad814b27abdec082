"""compose.yaml without Docker: each service of ours (``build: .``) is run exactly as
compose would run it — its environment from compose.yaml over the Dockerfile's ``ENV``
lines, its ``command`` from compose.yaml, as the Dockerfile's non-root ``USER`` (a user
namespace maps us to uid 65534; the process has no capabilities), in a read-only copy of
what the Dockerfile ``COPY``s (minus ``.dockerignore``) — against a real broker and a real
PostgreSQL standing in for compose's ``kafka`` and ``*-db`` services.

Only addresses are translated: compose's ``name:port`` to the test's broker, database and
free ports on 127.0.0.1, and each container's own ``/tmp`` to a directory of the test's.
Every other value passes through unchanged, so a wrong or missing variable in compose.yaml
fails here; a value that looks like ``host:port`` the test cannot translate fails loudly.
Then each compose healthcheck runs the same way, a saga is approved and one rejected over
HTTP, the services reach each other by their compose names, and nothing was written into
the application directory.

Needs ``unshare --user`` (util-linux) and user namespaces: without them the module is
skipped with the reason, or fails when ``SAGA_REQUIRE_COMPOSE_EQUIVALENT=1`` (CI).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from sagastack.client import SagaClient
from sagastack.embedded import free_port
from sagastack.system import BrokerKind, System

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: What Debian's images (python:*-slim) give the ``nobody`` of ``USER nobody``.
USERS = {"nobody": 65534}
#: A ``host:port`` left in a value after translation (URL schemes and ``user:password@``
#: are not followed by digits and a boundary).
HOST_PORT = re.compile(r"(?<![\w.@-])([A-Za-z0-9][\w.-]*):(\d{1,5})(?![\w.])")


# -- what the Dockerfile builds ---------------------------------------------------------
@dataclass
class Image:
    """The Dockerfile's instructions that decide how a container runs."""

    workdir: str = "/"
    #: (sources, destination) of each ``COPY``, relative to the build context and WORKDIR
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    cmd: list[str] | None = None


def read_dockerfile(path: Path) -> Image:
    """The ``WORKDIR``, ``COPY``, ``ENV``, ``USER`` and ``CMD`` of a one-stage Dockerfile
    without line continuations; any instruction this test does not model (``ENTRYPOINT``,
    ``ARG``, ``COPY --from``, …) is an error, so it cannot change how a container runs
    unnoticed."""
    image = Image()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction in ("FROM", "RUN", "EXPOSE", "LABEL"):
            continue
        if instruction == "WORKDIR":
            image.workdir = rest.strip()
        elif instruction == "COPY" and not rest.startswith("--"):
            *sources, destination = shlex.split(rest)
            image.copies.append((sources, destination))
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                name, eq, value = pair.partition("=")
                assert eq, f"ENV {rest!r}: only the NAME=value form is modelled"
                image.env[name] = value
        elif instruction == "USER":
            image.user = rest.strip()
        elif instruction == "CMD":
            image.cmd = json.loads(rest)
        else:
            raise AssertionError(f"Dockerfile: {line!r} is not modelled by this test")
    return image


def ignored(relative: str, patterns: Sequence[str]) -> bool:
    """Whether ``.dockerignore`` excludes a path (``name``, ``dir/*``, ``**/name``)."""
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(relative, pattern.rstrip("/")) or fnmatch.fnmatch(parts[0], pattern.rstrip("/")):
            return True
    return False


def build_app_dir(image: Image, app: Path) -> None:
    """What ``COPY`` puts into WORKDIR, copied into ``app``, then made read-only (files
    0444, directories 0555)."""
    ignore_file = ROOT / ".dockerignore"
    patterns = [
        p.strip() for p in ignore_file.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    app.mkdir()
    for sources, destination in image.copies:
        for source in sources:
            target = app / Path(source).name if destination.endswith("/") else app / destination
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    target,
                    ignore=lambda d, names: [
                        n for n in names if ignored(str(Path(d, n).relative_to(ROOT)), patterns)
                    ],
                )
            else:
                shutil.copy2(origin, target)
    for directory, _, files in os.walk(app, topdown=False):
        for name in files:
            Path(directory, name).chmod(0o444)
        Path(directory).chmod(0o555)


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``directory`` with its mode, size and mtime (ns)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(directory))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


# -- the stand-ins for compose's infrastructure ----------------------------------------
def user_namespace_problem(uid: int) -> str | None:
    """Why ``unshare --user`` cannot run a process as ``uid`` here, or None."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    try:
        probe = subprocess.run(
            ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}", "id", "-u"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare --user` did not run: {exc}"
    if probe.returncode != 0 or probe.stdout.strip() != str(uid):
        return f"`unshare --user --map-user={uid}` failed ({probe.returncode}): {probe.stderr.strip()}"
    return None


def create_database(admin_url: str, postgres_env: Mapping[str, str]) -> None:
    """What the postgres image makes of its ``POSTGRES_DB``, ``POSTGRES_USER`` and
    ``POSTGRES_PASSWORD``: the database, owned by that user, a superuser."""
    user, password, database = (
        postgres_env[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
            conn.execute(
                sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(user))
        )


@dataclass
class ComposeStack:
    """Our compose services, running the compose way, and what they run on."""

    system: System
    app: Path
    uid: int
    #: compose service name → the environment it was given
    env: dict[str, dict[str, str]]
    #: compose service name → its container port (``*_HTTP_PORT``) and the port it got here
    ports: dict[str, tuple[int, int]]
    #: how a command runs as the image's user (the ``unshare`` prefix)
    as_user: list[str]
    compose: dict[str, Any]
    data_dirs: dict[str, Path]
    before: dict[str, tuple[int, int, int]]

    def run(
        self, service: str, command: Sequence[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``command`` the way ``docker compose exec`` (or a healthcheck) runs it in
        ``service``'s container: its user, its environment, in WORKDIR."""
        return subprocess.run(
            [*self.as_user, *command],
            env=self.env[service],
            cwd=self.app,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def url(self, service: str) -> str:
        return self.system.url(service)


def translate(value: str, addresses: Mapping[str, str], own_tmp: Path) -> str:
    """A compose value with every known ``name:port`` replaced by its stand-in's address,
    a ``postgresql://…@<db>:5432/<name>`` URL pointed at the embedded server's socket,
    and the container's ``/tmp`` at ``own_tmp``; a ``host:port`` left over is an error."""
    if value.startswith("/"):
        assert value == "/tmp" or value.startswith("/tmp/"), (
            f"{value!r}: a path in the container that this test does not know how to stand in for"
        )
        return str(own_tmp / value.removeprefix("/tmp").lstrip("/"))
    if value.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(value)
        netloc = f"{parts.hostname}:{parts.port}"
        assert netloc in addresses and not parts.query, f"{value!r}: no database stands in for {netloc}"
        socket_dir = addresses[netloc]
        credentials = parts.netloc.rpartition("@")[0]
        return f"{parts.scheme}://{credentials}@{parts.path}?host={socket_dir}"
    translated = HOST_PORT.sub(lambda m: addresses.get(m.group(0), m.group(0)), value)
    for m in HOST_PORT.finditer(translated):
        assert m.group(1) in ("127.0.0.1", "localhost") or m.group(0) in addresses.values(), (
            f"{value!r} names {m.group(0)}, which this test does not know how to translate"
        )
    return translated


def dependency_layers(services: Mapping[str, Any], ours: Sequence[str]) -> list[list[str]]:
    """Our services in start order: each layer depends (``depends_on``) only on the
    stand-ins and earlier layers."""
    layers: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(ours):
        layer = [
            s
            for s in ours
            if s not in placed
            and all(d not in ours or d in placed for d in services[s].get("depends_on", {}))
        ]
        assert layer, f"a depends_on cycle among {sorted(set(ours) - placed)}"
        layers.append(layer)
        placed.update(layer)
    return layers


@pytest.fixture(scope="module")
def stack(run_root: Path, broker_kind: BrokerKind) -> Iterator[ComposeStack]:
    image = read_dockerfile(ROOT / "Dockerfile")
    assert image.user in USERS, f"USER {image.user}: this test knows the uid of {sorted(USERS)} only"
    uid = USERS[image.user]
    problem = user_namespace_problem(uid)
    if problem:
        if os.environ.get("SAGA_REQUIRE_COMPOSE_EQUIVALENT") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    as_user = ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]

    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    ours = [name for name, svc in services.items() if "build" in svc]
    stand_ins = [name for name in services if name not in ours]

    root = Path(tempfile.mkdtemp(prefix="compose-", dir=run_root))
    root.chmod(0o755)
    app = root / "app"
    build_app_dir(image, app)
    before = snapshot(app)

    system = System(root / "run", free_ports=True, fresh=True, broker_kind=broker_kind)
    system.start_servers()
    try:
        assert system.postgres is not None
        # compose's services reach their databases over the network; here the stand-in's
        # socket, in a directory a process without our privileges may enter
        socket_dir = root / "pg-socket"
        system.pids.add("postgres", system.postgres.add_socket_directory(socket_dir))
        addresses: dict[str, str] = {}
        for name in stand_ins:
            svc = services[name]
            if svc["image"].startswith("apache/kafka:"):
                listener = svc["environment"]["KAFKA_ADVERTISED_LISTENERS"].partition("://")[2]
                addresses[listener] = system.bootstrap
            elif svc["image"].startswith("postgres:"):
                create_database(system.postgres.url("postgres"), svc["environment"])
                addresses[f"{name}:5432"] = str(socket_dir)
            else:
                raise AssertionError(
                    f"compose service {name} ({svc['image']}): this test has no stand-in for it"
                )

        ports: dict[str, tuple[int, int]] = {}
        for name in ours:
            (port_key,) = [k for k in services[name]["environment"] if k.endswith("_HTTP_PORT")]
            container_port = int(services[name]["environment"][port_key])
            ports[name] = (container_port, free_port())
            for published in services[name].get("ports", []):
                host_ip, _host_port, container = str(published).split(":")
                assert (host_ip, int(container)) == ("127.0.0.1", container_port), (
                    f"{name} publishes {published}, but listens on {container_port}"
                )
            addresses[f"{name}:{container_port}"] = f"127.0.0.1:{ports[name][1]}"

        envs: dict[str, dict[str, str]] = {}
        data_dirs: dict[str, Path] = {}
        for name in ours:
            own_tmp = root / "tmp" / name  # each container has a /tmp of its own
            own_tmp.mkdir(parents=True)
            container_port, port = ports[name]
            env: dict[str, str] = {
                # the base image's: python on PATH (here the venv's), a UTF-8 locale
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
                "LANG": "C.UTF-8",
                # nobody's home in the image does not exist: nothing may be written there
                "HOME": str(root / "nonexistent"),
                # in the image the copy in WORKDIR runs (the working directory is first on
                # sys.path, and pip installed that same copy); here the venv's editable
                # install points elsewhere, so the copy is put first explicitly
                "PYTHONPATH": str(app),
            }
            for key, value in {**image.env, **services[name]["environment"]}.items():
                value = str(value)
                if key.endswith("_HTTP_HOST") and value == "0.0.0.0":
                    value = "127.0.0.1"  # 0.0.0.0 is the container's own interface; here: loopback only
                elif key.endswith("_HTTP_PORT"):
                    assert value == str(container_port)
                    value = str(port)
                elif key == "KAFKA_IDEMPOTENT_PRODUCER" and broker_kind == "tansu":
                    # compose runs Apache Kafka; the Tansu stand-in cannot (docs/design.md §2)
                    value = "false"
                else:
                    value = translate(value, addresses, own_tmp)
                env[key] = value
            if "SAGA_DATA_DIR" in env:
                data_dirs[name] = Path(env["SAGA_DATA_DIR"])
            envs[name] = env

        for layer in dependency_layers(services, ours):
            for name in layer:
                command = services[name].get("command", image.cmd)
                assert command, f"{name} has no command and the image no CMD"
                system.start_command(name, [*as_user, *command], ports[name][1], envs[name], cwd=app)
            for name in layer:
                system.wait_ready(name)
        yield ComposeStack(system, app, uid, envs, ports, as_user, compose, data_dirs, before)
    finally:
        system.stop()


# -- the tests ------------------------------------------------------------------------
def test_each_service_runs_as_the_image_user_without_capabilities(stack: ComposeStack) -> None:
    for name, sp in stack.system.services.items():
        assert sp.proc is not None and sp.proc.poll() is None, name
        proc = Path("/proc", str(sp.proc.pid))
        inside, _outside, count = (proc / "uid_map").read_text().split()
        assert (int(inside), count) == (stack.uid, "1"), f"{name}: uid_map {inside} {count}"
        status = dict(
            line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line
        )
        assert int(status["CapEff"], 16) == 0, f"{name} has capabilities {status['CapEff']}"
        assert (proc / "cwd").resolve() == stack.app, name
        assert (proc / "cmdline").read_bytes().split(b"\0")[:3] == [
            b"python",
            b"-m",
            name.replace("-", "_").encode(),
        ]


def test_the_application_directory_is_read_only_to_that_user(stack: ComposeStack) -> None:
    probe = "import os; print(os.getuid(), flush=True); open('probe', 'w')"
    for name in stack.env:
        done = stack.run(name, ["python", "-c", probe])
        assert done.stdout.strip() == str(stack.uid), (name, done.stdout, done.stderr)
        assert done.returncode != 0 and "PermissionError" in done.stderr, (name, done.stdout, done.stderr)
    assert not (stack.app / "probe").exists()


def test_the_copy_in_the_application_directory_is_the_code_that_runs(stack: ComposeStack) -> None:
    """Every top-level package the Dockerfile copies, and every console script's module
    (``pip install .`` installs the scripts from the same copy), import from ``app``."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {}).values()
    packages = sorted({p.name for p in stack.app.iterdir() if (p / "__init__.py").exists()})
    modules = packages + [s.partition(":")[0] for s in scripts]
    code = (
        "import importlib, json, sys;"
        " print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))"
    )
    for name in stack.env:
        done = stack.run(name, ["python", "-c", code, *modules])
        assert done.returncode == 0, (name, done.stderr)
        files = json.loads(done.stdout)
        outside = {m: f for m, f in files.items() if not Path(f).is_relative_to(stack.app)}
        assert not outside, f"{name}: imported from outside the application directory: {outside}"


def test_every_compose_healthcheck_passes_run_the_compose_way(stack: ComposeStack) -> None:
    for name, (container_port, port) in stack.ports.items():
        test = stack.compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: healthcheck {test[0]} is not modelled"
        own = re.compile(rf"127\.0\.0\.1:{container_port}(?!\d)")
        command = [own.sub(f"127.0.0.1:{port}", part) for part in test[1:]]
        assert command != test[1:], f"{name}: the healthcheck does not ask port {container_port}"
        done = stack.run(name, command)
        assert done.returncode == 0, (name, command, done.stderr)


def test_services_answer_requests_addressed_by_their_compose_names(stack: ComposeStack) -> None:
    """Each URL one service is given of another is asked with the ``Host`` it names in
    compose (``inventory-svc:8002``), as the caller would send it there."""
    asked = 0
    for name, svc in stack.compose["services"].items():
        for value in svc.get("environment", {}).values():
            for m in HOST_PORT.finditer(str(value)):
                callee = m.group(1)
                if callee in stack.ports and callee != name:
                    response = httpx.get(f"{stack.url(callee)}/health/ready", headers={"Host": m.group(0)})
                    assert response.status_code == 200, (name, m.group(0), response.text)
                    asked += 1
    assert asked >= 3  # order → inventory, payment; payment → provider


def test_a_saga_is_approved_and_one_rejected_for_funds(stack: ComposeStack) -> None:
    order_url, inventory_url, payment_url = (
        stack.url(s) for s in ("order-svc", "inventory-svc", "payment-svc")
    )
    client = SagaClient(order_url, inventory_url, payment_url)
    try:
        product, rich, poor = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("lamp", "rich", "poor"))
        client.put_product(product, "Lamp", Decimal("30.00"), 5)
        client.put_account(rich, Decimal("100.00"))
        client.put_account(poor, Decimal("10.00"))
        approved = client.place_order(rich, {product: 2})
        rejected = client.place_order(poor, {product: 1})
        client.wait_for_events(approved, {"OrderApproved", "InventoryCommitted"}, timeout=60)
        client.wait_for_events(rejected, {"OrderRejected", "InventoryReleased"}, timeout=60)
        assert client.order(approved)["status"] == "APPROVED"
        assert (client.order(rejected)["status"], client.order(rejected)["reason"]) == (
            "REJECTED",
            "insufficient_funds",
        )
        assert client.account(rich)["balance"] == "40.00"
        stock = client.product(product)
        assert (stock["available"], stock["reserved"], stock["sold"]) == (3, 0, 2)

        # the dashboard reads the other two services at the URLs compose gives it
        dashboard = httpx.Client(base_url=order_url, timeout=10)
        with dashboard:
            products = dashboard.get("/dashboard/api/stock").json()
            assert product in json.dumps(products)
            balances = dashboard.get("/dashboard/api/balances").json()
            assert rich in json.dumps(balances)
            health = dashboard.get("/dashboard/api/health").json()
            assert {s: h["status"] for s, h in health.items()} == {
                "order_svc": "ready",
                "inventory_svc": "ready",
                "payment_svc": "ready",
            }, health
    finally:
        client.close()


def test_every_service_is_ready_and_nothing_was_written_to_the_application_directory(
    stack: ComposeStack,
) -> None:
    for name in stack.ports:
        assert httpx.get(f"{stack.url(name)}/health/ready").status_code == 200, name
    assert snapshot(stack.app) == stack.before
    # faust's files went where the image's SAGA_DATA_DIR sends them
    consumers = [name for name in stack.ports if "KAFKA_BOOTSTRAP_SERVERS" in stack.env[name]]
    assert consumers
    for name in consumers:
        assert name in stack.data_dirs, f"{name} is given no SAGA_DATA_DIR"
        assert any(stack.data_dirs[name].iterdir()), f"{name} wrote nothing to {stack.data_dirs[name]}"


def test_each_service_stops_within_compose_grace_period(stack: ComposeStack) -> None:
    """``docker compose stop``: SIGTERM, dependents first, SIGKILL after 10 s. Each ends by
    itself in time: exit 0, or the SIGTERM uvicorn raises again after its own graceful
    shutdown (the provider; 143 in a container) — never the SIGKILL."""
    layers = dependency_layers(stack.compose["services"], list(stack.ports))
    for layer in reversed(layers):
        for name in layer:
            code = stack.system.stop_service(name, signal.SIGTERM, timeout=10)
            assert code in (0, -signal.SIGTERM), f"{name}: {code}\n{stack.system.log_tail(name)}"
    assert snapshot(stack.app) == stack.before
