"""End-to-end fixtures: the whole system as processes — the broker (``--broker``: Tansu or
Apache Kafka), PostgreSQL, three services."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from sagastack.browser import chromium_paths, open_chromium
from sagastack.client import SagaClient
from sagastack.system import BrokerKind, System


@pytest.fixture(scope="session")
def system(run_root: Path, broker_kind: BrokerKind) -> Iterator[System]:
    # DEBUG: the line per handled event (tests follow a saga through the logs)
    debug = {name: {"LOG_LEVEL": "DEBUG"} for name in ("order_svc", "inventory_svc", "payment_svc")}
    with System(
        run_root / "e2e", free_ports=True, fresh=True, service_env=debug, broker_kind=broker_kind
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Debian chromium under Selenium, or a skip (a failure in CI) without it."""
    if chromium_paths() is None:
        message = (
            "Debian's chromium and chromium-driver are not installed (`make test` installs them as root)"
        )
        if os.environ.get("SAGA_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    driver = open_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def client(system: System) -> Iterator[SagaClient]:
    c = system.client()
    yield c
    c.close()


@pytest.fixture
def uid() -> UniqueIds:
    return UniqueIds()


class UniqueIds:
    """Fresh product and customer ids, so tests sharing the system never interfere."""

    def __call__(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def seed(
    client: SagaClient, uid: UniqueIds, stock: dict[str, tuple[str, int]], balances: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Create products (name → (price, stock)) and accounts (name → balance) under fresh ids."""
    products = {name: uid(name) for name in stock}
    customers = {name: uid(name) for name in balances}
    for name, (price, qty) in stock.items():
        client.put_product(products[name], name, Decimal(price), qty)
    for name, balance in balances.items():
        client.put_account(customers[name], Decimal(balance))
    return products, customers


def sagastack(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sagastack`` as a user would (at its own log level), output captured."""
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "sagastack", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def sagactl_env(system: System, columns: int = 250, token: str | None = "operator") -> dict[str, str]:
    """The environment ``sagactl`` runs in against ``system`` (``sagactl``'s arguments)."""
    return {
        **os.environ,
        **system.broker_env(),
        "SAGACTL_ORDER_URL": system.url("order_svc"),
        "SAGACTL_INVENTORY_URL": system.url("inventory_svc"),
        "SAGACTL_PAYMENT_URL": system.url("payment_svc"),
        "SAGA_ISSUER_DIR": str(system.run_dir / "keys" / "issuer"),
        "SAGA_TOKEN": system.token() if token == "operator" else (token or ""),
        "COLUMNS": str(columns),
    }


def sagactl(
    system: System,
    *args: str,
    columns: int = 250,
    token: str | None = "operator",
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``sagactl`` against ``system`` as if in a terminal ``columns`` wide, connecting
    to its broker as its services do (``--via kafka``), with an operator's token
    (``token="operator"``), the token given, or none (``None``); ``stdin``: its input."""
    return subprocess.run(
        [sys.executable, "-m", "sagactl", *args],
        env=sagactl_env(system, columns, token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sagactl_started(system: System, *args: str) -> subprocess.Popen[str]:
    """``sagactl`` started against ``system`` as ``sagactl`` runs it, not waited for: its
    stdout and stderr are pipes (text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sagactl", *args],
        env=sagactl_env(system),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kafka_records(system: System, topic: str) -> list[Any]:
    """Every record of ``topic``, every partition, from the start of its log (aiokafka's
    ``ConsumerRecord``: ``key``, ``value``, ``headers``)."""

    async def read() -> list[Any]:
        security = system.kafka_security.client_kwargs()
        admin = AIOKafkaAdminClient(bootstrap_servers=system.bootstrap, **security)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert partitions, f"no partitions of {topic}"
        consumer = AIOKafkaConsumer(bootstrap_servers=system.bootstrap, enable_auto_commit=False, **security)
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[Any] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    found += records
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())
