from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from inventory_svc.settings import Settings as InventorySettings
from order_svc.settings import Settings as OrderSettings
from saga_kit.urls import base_url, http_url


def test_each_service_reads_its_own_prefix_and_the_shared_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://u@db/orders")
    monkeypatch.setenv("ORDER_HTTP_PORT", "9001")
    monkeypatch.setenv("INVENTORY_DATABASE_URL", "postgres://u@db/inventory")
    order = OrderSettings()  # type: ignore[call-arg]
    inventory = InventorySettings()  # type: ignore[call-arg]
    assert order.kafka_bootstrap_servers == inventory.kafka_bootstrap_servers == "broker:9092"
    assert order.database_url == "postgresql+psycopg://u@db/orders"
    assert inventory.database_url == "postgresql+psycopg://u@db/inventory"
    assert (order.http_port, inventory.http_port) == (9001, 8002)


def test_a_missing_or_foreign_database_url_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDER_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError):
        OrderSettings()  # type: ignore[call-arg]
    monkeypatch.setenv("ORDER_DATABASE_URL", "mysql://u@db/orders")
    with pytest.raises(ValidationError, match="postgresql"):
        OrderSettings()  # type: ignore[call-arg]


def test_an_idle_fetch_wait_longer_than_the_busy_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("KAFKA_FETCH_IDLE_WAIT_MS", "2000")
    monkeypatch.delenv("KAFKA_FETCH_MAX_WAIT_MS", raising=False)
    with pytest.raises(ValidationError, match=r"KAFKA_FETCH_IDLE_WAIT_MS must not exceed") as refused:
        OrderSettings()  # type: ignore[call-arg]
    assert "2000" not in str(refused.value.errors()[0]["msg"])  # never a value: one may be a secret
    monkeypatch.setenv("KAFKA_FETCH_IDLE_WAIT_MS", "100")
    assert OrderSettings().kafka_fetch_idle_wait_ms == 100  # type: ignore[call-arg]  # equal: a fixed wait


def _start(module: str, **variables: str) -> tuple[list[str], str]:
    """Start ``python -m module`` with ``variables`` instead of the environment's own
    service variables; it must stop at once with exit code 2. Its log lines and stderr."""
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KAFKA_", "SAGA_", "ORDER_", "INVENTORY_", "PAYMENT_", "PROVIDER_"))
        },
        **variables,
    }
    done = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    return done.stderr.strip().splitlines(), done.stderr


def test_a_service_with_invalid_settings_says_which_in_one_line_and_exits_2() -> None:
    """No traceback, the variables named, their values not shown (one may be a secret)."""
    lines, stderr = _start(
        "order_svc",
        ORDER_DATABASE_URL="mysql://shop:s3cret-pw@db/orders",
        KAFKA_FETCH_IDLE_WAIT_MS="abc",
    )
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "order_svc cannot start" in lines[0]
    assert "KAFKA_FETCH_IDLE_WAIT_MS: Input should be a valid integer" in lines[0]
    assert "ORDER_DATABASE_URL" in lines[0] and "postgresql" in lines[0]
    assert "s3cret-pw" not in stderr and "abc" not in stderr


def test_production_refuses_fault_injection_and_development_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SAGA_FAULT`` makes a service kill itself at a named point: a chaos run's tool, which
    the README's "never set it in production" only advised against."""
    lines, stderr = _start(
        "order_svc",
        ORDER_DATABASE_URL="postgresql://u@localhost/db",
        SAGA_ENV="production",
        SAGA_FAULT="relay.before_publish",
    )
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "cannot start: SAGA_FAULT is for tests and chaos runs: SAGA_ENV=production refuses it" in lines[0]
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("SAGA_FAULT", "relay.before_publish")
    assert OrderSettings().fault == "relay.before_publish"  # type: ignore[call-arg]


def test_a_log_level_is_checked_like_any_other_setting_and_taken_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LOG_LEVEL=LOUD`` was a traceback from the logging module ("Unknown level"), exit 1;
    a validator's refusal began with pydantic's "Value error, "."""
    lines, stderr = _start("order_svc", ORDER_DATABASE_URL="postgresql://u@localhost/db", LOG_LEVEL="LOUD")
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'" in lines[0]
    assert "LOUD" not in stderr
    lines, _ = _start(
        "order_svc", ORDER_DATABASE_URL="postgresql://u@localhost/db", KAFKA_FETCH_IDLE_WAIT_MS="500"
    )
    assert "cannot start: KAFKA_FETCH_IDLE_WAIT_MS must not exceed KAFKA_FETCH_MAX_WAIT_MS" in lines[0]
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert OrderSettings().log_level == "DEBUG"  # type: ignore[call-arg]


def test_the_payment_provider_simulator_with_invalid_settings_says_so_in_one_line() -> None:
    lines, stderr = _start(
        "payment_provider",
        PROVIDER_DATABASE_URL="postgresql://sim:s3cret-pw@localhost/provider",
        PROVIDER_HTTP_PORT="eighty",
    )
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "cannot start" in lines[0] and "PROVIDER_HTTP_PORT" in lines[0], lines[0]
    assert "s3cret-pw" not in stderr and "eighty" not in stderr


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        ("order_svc", "ORDER_HTTP_PORT"),
        ("inventory_svc", "INVENTORY_HTTP_PORT"),
        ("payment_svc", "PAYMENT_HTTP_PORT"),
    ],
)
def test_a_port_out_of_range_is_refused_at_start(module: str, variable: str) -> None:
    prefix = variable.split("_")[0]
    lines, _ = _start(module, **{f"{prefix}_DATABASE_URL": "postgresql://u@localhost/db", variable: "99999"})
    assert f"{variable}: Input should be less than or equal to 65535" in lines[0], lines


@pytest.mark.parametrize(
    ("module", "variables", "said"),
    [
        ("payment_svc", {"PAYMENT_PROVIDER_URL": "notaurl"}, "PAYMENT_PROVIDER_URL: must be an http(s) URL"),
        ("inventory_svc", {"AUTH_JWKS_URL": "ftp://keys.example"}, "AUTH_JWKS_URL: must be an http(s) URL"),
        ("order_svc", {"ORDER_PAYMENT_URL": "http://"}, "ORDER_PAYMENT_URL: must be an http(s) URL"),
        (
            "order_svc",
            {"ORDER_DATABASE_URL": "postgresql://u:s3cret-pw@localhost:notaport/db"},
            "ORDER_DATABASE_URL: is not a URL SQLAlchemy can read",
        ),
        ("payment_svc", {"SAGA_FAULT": "relay.before_publsh"}, "SAGA_FAULT: names no fault: one of"),
        # pydantic alone mends or takes these; httpx, the services' client, reads no host
        ("payment_svc", {"PAYMENT_PROVIDER_URL": "http:/x"}, "PAYMENT_PROVIDER_URL: must be an http(s) URL"),
        ("payment_svc", {"PAYMENT_PROVIDER_URL": " http://x"}, "PAYMENT_PROVIDER_URL: must be an http"),
        ("order_svc", {"ORDER_INVENTORY_URL": "http://x\n"}, "ORDER_INVENTORY_URL: must be an http(s) URL"),
        (
            "inventory_svc",
            {"INVENTORY_DATABASE_URL": "postgresql://u:s3cret-pw@localhost:99999/db"},
            "INVENTORY_DATABASE_URL: is not a URL SQLAlchemy can read",
        ),
        # taken, then every connection failed as if the broker were away (an attack trial)
        ("order_svc", {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, "BOOTSTRAP_SERVERS: '127.0.0.1:99999'"),
        ("payment_svc", {"KAFKA_BOOTSTRAP_SERVERS": "a:1,,b:2"}, "BOOTSTRAP_SERVERS: '' is not host:port"),
        # aiokafka reads a negative port as 9092: another stack's broker, with no word
        ("inventory_svc", {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:-1"}, "BOOTSTRAP_SERVERS: '127.0.0.1:-1'"),
    ],
)
def test_a_url_or_fault_that_cannot_work_is_refused_at_start(
    module: str, variables: dict[str, str], said: str
) -> None:
    """An operator trial: ``PAYMENT_PROVIDER_URL=notaurl`` started, was ready, and failed
    every charge until each order's deadline; ``AUTH_JWKS_URL=notaurl`` answered every
    request 503; a database URL whose port is no number stopped on a traceback naming no
    variable; a misspelt ``SAGA_FAULT`` injected nothing, silently."""
    prefix = module.split("_")[0].upper()
    lines, stderr = _start(module, **{f"{prefix}_DATABASE_URL": "postgresql://u@localhost/db", **variables})
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert said in lines[0], lines[0]
    assert "s3cret-pw" not in stderr and "notaport" not in stderr


@pytest.mark.parametrize(
    ("fault", "taken"),
    [
        ("consumer.drop_first_record=order-1", True),
        ("relay.delay=1.0", True),  # the chaos run's slow relay
        ("relay.delay=0", True),
        ("consumer.pipeline_error", True),
        ("relay.delay=abc", False),
        ("relay.delay=-1", False),
        ("relay.delay=inf", False),
        ("consumer.drop_first_record=", False),
        ("relay.delay=<seconds>", False),
        ("relay.before_publish=1", False),
    ],
)
def test_a_fault_with_its_argument_is_taken_only_when_the_argument_works(
    monkeypatch: pytest.MonkeyPatch, fault: str, taken: bool
) -> None:
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("SAGA_FAULT", fault)
    if taken:
        assert OrderSettings().fault == fault  # type: ignore[call-arg]
    else:
        with pytest.raises(ValidationError, match="names no fault"):
            OrderSettings()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        (
            {"PAYMENT_EVENT_SIGNING_KEY_FILE": "{missing}"},
            "PAYMENT_EVENT_SIGNING_KEY_FILE={missing} cannot be used: No such file or directory",
        ),
        (
            {"PAYMENT_EVENT_SIGNING_KEY_FILE": "{not_pem}"},
            "PAYMENT_EVENT_SIGNING_KEY_FILE={not_pem} cannot be used: ValueError",
        ),
        ({"EVENT_TRUST_FILE": "{not_pem}"}, "EVENT_TRUST_FILE={not_pem} cannot be used: JSONDecodeError"),
        ({"EVENT_TRUST_FILE": "{no_keys}"}, "EVENT_TRUST_FILE={no_keys} cannot be used: KeyError: 'keys'"),
        ({"AUTH_JWKS_FILE": "{missing}"}, "AUTH_JWKS_FILE={missing} cannot be used: No such file"),
        ({"AUTH_JWKS_FILE": "{no_keys}"}, "AUTH_JWKS_FILE={no_keys} cannot be used: PyJWKSetError"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{missing}"},
            "KAFKA_SSL_CAFILE={missing} cannot be read: No such file or directory",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{not_pem}"},
            "KAFKA_SSL_CAFILE={not_pem} cannot be used:",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{not_pem}"},
            "KAFKA_SSL_CERTFILE={not_pem} cannot be used:",
        ),
    ],
)
def test_a_file_a_setting_names_that_cannot_be_used_is_named_at_start(
    tmp_path: Path, variables: dict[str, str], said: str
) -> None:
    """An operator trial: a missing or unreadable key, trust, JWKS or CA file stopped the
    service on a traceback (exit 1) naming neither the variable nor, for the CA, the file;
    some left a Kafka client unclosed. Now: exit 2, one error naming both, nothing made."""
    files = {
        "missing": tmp_path / "missing.pem",
        "not_pem": tmp_path / "not.pem",
        "no_keys": tmp_path / "k.json",
    }
    files["not_pem"].write_text("not a PEM file, nor JSON\n")
    files["no_keys"].write_text('{"other": []}\n')
    names = {name: str(path) for name, path in files.items()}
    lines, stderr = _start(
        "payment_svc",
        PAYMENT_DATABASE_URL="postgresql://u@localhost/db",
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
        **{variable: value.format(**names) for variable, value in variables.items()},
    )
    assert "Traceback" not in stderr and "Unclosed" not in stderr, stderr
    assert f"payment_svc cannot start: {said.format(**names)}" in lines[-1], lines


@pytest.mark.parametrize(
    ("url", "taken"),
    [
        ("http://127.0.0.1:8004", True),
        ("https://pay.example.com/api/v1", True),
        ("http://[::1]:8002", True),
        ("HTTP://PAY.EXAMPLE", True),
        ("notaurl", False),
        ("ftp://pay.example", False),
        ("http://", False),
        ("http:/pay.example", False),
        ("http:///path", False),
        ("http:127.0.0.1:1", False),
        (" http://pay.example", False),
        ("http://pay.example\n", False),
        ("http://pay\texample", False),
        ("http://pay.example:99999", False),
    ],
)
def test_a_url_is_taken_only_when_both_parsers_read_a_host(url: str, taken: bool) -> None:
    """``saga_kit.urls.http_url``: pydantic and httpx (the clients') must agree (a trial:
    ``http:/x`` passed pydantic, and every call then had no host)."""
    if taken:
        assert http_url(url) == url  # kept as written
    else:
        with pytest.raises(ValueError, match="must be an http"):
            http_url(url)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:8003?x=1", "without a query"),
        ("http://127.0.0.1:8003/#top", "or a fragment"),
        ("http://user:pw@127.0.0.1:8002", "without user:password@"),
        ("http://127.0.0.1:8001/ x", "without a blank"),
        ("http://127.0.0.1:8001/\tx", "non-printable"),  # httpx's own refusal
    ],
)
def test_a_base_url_has_nothing_a_path_could_not_follow(url: str, said: str) -> None:
    """``saga_kit.urls.base_url`` (an attack trial gave sagactl each: a 404 "no route GET
    /", or a 401 "pass --token" for a token that was given, Basic auth sent in its place)."""
    with pytest.raises(ValueError, match=said):
        base_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8001", "https://payments.example/api/v2/", "http://[::1]:80"]
)
def test_a_base_url_is_kept_as_written(url: str) -> None:
    assert base_url(url) == url


def test_the_payment_providers_url_is_a_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from payment_svc.settings import Settings as PaymentSettings

    monkeypatch.setenv("PAYMENT_DATABASE_URL", "postgresql://u@db/payments")
    monkeypatch.setenv("PAYMENT_PROVIDER_URL", "http://127.0.0.1:8004?key=1")
    with pytest.raises(ValidationError, match="without a query"):
        PaymentSettings()  # type: ignore[call-arg]
