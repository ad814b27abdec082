"""sagactl's own options (--token, --order-url, --inventory-url, --payment-url) after the
command, and between a group and its command, as well as before it: ``sagactl forget
alice --token X`` was "No such option: --token" (a newcomer's first try), and so was
``sagactl dlq --token X list``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagactl.cli import UNREACHABLE, USAGE, app
from tests.jsonserver import JsonServer

#: what the order service answers a forget with a token; without one it refuses (401)
FORGOTTEN = b'{"customer_id": "alice", "keys_destroyed": 1}'
NO_TOKEN = (401, b'{"detail": "a bearer token is required", "reason": "missing_token"}')


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SAGA_TOKEN", "SAGACTL_ORDER_URL", "SAGACTL_INVENTORY_URL", "SAGACTL_PAYMENT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "args",
    [
        ["--order-url", "{base}", "--token", "t0k", "forget", "alice"],  # before, as it was
        ["--order-url", "{base}", "forget", "alice", "--token", "t0k"],  # after
        ["forget", "--token", "t0k", "alice", "--order-url", "{base}"],  # between, and after
        ["forget", "--order-url={base}", "--token=t0k", "alice"],
        # a value like a command's name is a value; after '--' an argument
        ["--order-url", "{base}", "forget", "--token", "orders", "--", "alice"],
    ],
    ids=["before", "after", "between", "equals", "command-like-value"],
)
def test_the_global_options_mean_the_same_after_the_command(args: list[str]) -> None:
    with JsonServer(FORGOTTEN, tokenless=NO_TOKEN) as order:
        result = CliRunner().invoke(app, [a.replace("{base}", order.base) for a in args])
        assert order.paths, "nothing was asked"
    assert result.exit_code == 0, result.output
    assert "No such option" not in result.output


def test_one_given_after_the_command_wins_over_one_before_it_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with JsonServer(b"[]") as order, JsonServer(b"[]") as inventory, JsonServer(b"[]") as payment:
        monkeypatch.setenv("SAGACTL_INVENTORY_URL", "http://127.0.0.1:1")
        result = CliRunner().invoke(
            app,
            [
                *("--order-url", "http://127.0.0.1:1", "--payment-url", "http://127.0.0.1:1"),
                *("dlq", "list", "-o", "json", "--order-url", order.base),  # a command of a group too
                *("--inventory-url", inventory.base, "--payment-url", payment.base),
            ],
        )
        asked = [served.paths for served in (order, inventory, payment)]
    assert result.exit_code == 0, result.output
    assert all(paths for paths in asked), asked
    listed = json.loads(result.stdout)
    assert (listed["dead_letters"], listed["unreachable"], listed["unavailable"]) == ([], {}, {})


def test_a_token_after_the_command_wins_over_saga_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_TOKEN", "")  # none: the service would refuse
    with JsonServer(FORGOTTEN, tokenless=NO_TOKEN) as order:
        result = CliRunner().invoke(app, ["--order-url", order.base, "forget", "alice", "--token", "t0k"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["forget", "alice", "--token", "b@d"], "--token is not a bearer token: character 2 is '@'"),
        (["forget", "alice", "--order-url", "notaurl"], "--order-url is not a service's base URL"),
        (["forget", "alice", "--token"], "Option '--token' requires an argument"),
    ],
)
def test_a_bad_value_after_the_command_is_a_usage_error(args: list[str], said: str) -> None:
    result = CliRunner().invoke(app, ["--order-url", "http://127.0.0.1:1", *args])
    assert result.exit_code == USAGE, result.output
    assert said in " ".join(result.output.split()), result.output


def test_a_command_that_sends_no_token_takes_any_after_it() -> None:
    """As before it: ``token`` and ``publish`` send none, so none is refused for them."""
    args = ["publish", "orders.events", "--tombstone", "--value", "x", "--token", "b@d"]
    result = CliRunner().invoke(app, args)  # refused for what it is, before the broker is asked
    said = " ".join(result.output.split())
    assert "not a bearer token" not in said and "--tombstone is a record with no body" in said, said


@pytest.mark.parametrize("command", [["forget"], ["dlq", "list"], ["tail"], ["dlq"], ["audit"]])
def test_each_command_help_names_the_global_options(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--token", "--order-url", "--inventory-url", "--payment-url"):
        assert option in result.output, (option, result.output)
    assert "SAGA_TOKEN" not in result.output  # no environment, no default of its own: main's
    top = " ".join(CliRunner().invoke(app, ["--help"]).output.split())
    assert "may come before the command or after it" in top
    assert "or between a group and its command ('sagactl dlq --token X list')" in top


#: what a service without a token answers a list (dead letters, audit entries) with
NO_TOKEN_FOR_A_LIST = (401, b'{"detail": "a bearer token is required", "reason": "missing_token"}')


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "--token", "t0k", "list"],
        ["dlq", "--token=t0k", "list", "-o", "json"],
        ["audit", "--token", "t0k", "verify"],
        # given again between them, and after: the last wins
        ["--token", "", "dlq", "--token", "t0k", "list"],
        ["dlq", "--token", "", "list", "--token", "t0k"],
        # a value like a command's name is a value; '--' still ends the group's options
        ["dlq", "--token", "list", "list"],
        ["dlq", "--token", "t0k", "--", "list"],
    ],
    ids=["dlq", "dlq-equals", "audit", "before-then-between", "between-then-after", "command-like", "dashes"],
)
def test_the_global_options_mean_the_same_between_a_group_and_its_command(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sagactl dlq --token X list`` was "No such option: --token": click reads a
    group's options before its command's name, and dlq's and audit's had none."""
    monkeypatch.setenv("SAGA_TOKEN", "")  # none: every service would refuse
    with JsonServer(b"[]", tokenless=NO_TOKEN_FOR_A_LIST) as served:
        urls = [f"--{name}-url={served.base}" for name in ("order", "inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, *args])
        assert served.paths, "nothing was asked"
    assert result.exit_code == 0, result.output
    assert "No such option" not in result.output


def test_a_url_between_a_group_and_its_command_wins_over_one_before_and_the_environment_not_one_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nowhere = "http://127.0.0.1:1"
    monkeypatch.setenv("SAGACTL_ORDER_URL", nowhere)
    with JsonServer(b"[]") as order, JsonServer(b"[]") as inventory, JsonServer(b"[]") as payment:
        result = CliRunner().invoke(
            app,
            [
                *("--inventory-url", nowhere, "--payment-url", nowhere),
                *("dlq", "--order-url", order.base, "--inventory-url", inventory.base),
                *("--payment-url", nowhere),
                *("list", "-o", "json", "--payment-url", payment.base),
            ],
        )
        asked = [served.paths for served in (order, inventory, payment)]
    assert result.exit_code == 0, result.output
    assert all(paths for paths in asked), asked


def test_after_dashes_a_global_option_is_taken_for_the_command_name_as_it_was() -> None:
    """What follows '--' is the command's name: ``dlq -- --token X list`` is a usage error
    naming --token (click's words for it vary), and nothing is asked."""
    with JsonServer(b"[]") as served:
        urls = [f"--{name}-url={served.base}" for name in ("order", "inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, "dlq", "--", "--token", "t0k", "list"])
        asked = served.paths
    assert result.exit_code == USAGE, result.output
    assert "--token" in result.output and not asked, (result.output, asked)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["dlq", "--token", "b@d", "list"], "--token is not a bearer token: character 2 is '@'"),
        (["audit", "--order-url", "notaurl", "verify"], "--order-url is not a service's base URL"),
    ],
)
def test_a_bad_value_between_a_group_and_its_command_is_a_usage_error(args: list[str], said: str) -> None:
    result = CliRunner().invoke(app, ["--order-url", "http://127.0.0.1:1", *args])
    assert result.exit_code == USAGE, result.output
    assert said in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "args",
    [
        ["forget", "alice", "--token", "t0k"],
        ["forget", "alice", "--token", ""],  # none, as asked: SAGA_TOKEN is not used either
        ["dlq", "--token", "t0k", "list"],
        ["dlq", "list", "--token", "t0k"],
        ["--token", "t0k", "dlq", "list"],
    ],
    ids=["after", "after-empty", "between", "after-a-group's-command", "before"],
)
def test_a_malformed_saga_token_does_not_matter_when_a_token_is_given_on_the_command_line(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SAGA_TOKEN=b@d sagactl forget alice --token X`` was refused, "SAGA_TOKEN is not a
    bearer token", exit 2: main checked the environment's before the command's options
    were read, though the one given after the command replaced it."""
    monkeypatch.setenv("SAGA_TOKEN", "b@d")
    answer = FORGOTTEN if args[0] == "forget" else b"[]"
    with JsonServer(answer) as served:
        urls = [f"--{name}-url={served.base}" for name in ("order", "inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, *args])
        asked = served.paths
    assert result.exit_code == 0, result.output
    assert "not a bearer token" not in result.output and asked, (result.output, asked)


@pytest.mark.parametrize("command", [["forget", "alice"], ["dlq", "list"], ["audit", "verify"]])
def test_a_malformed_saga_token_is_still_refused_when_it_is_the_token_used(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGA_TOKEN", "b@d")
    with JsonServer(b"[]") as served:
        urls = [f"--{name}-url={served.base}" for name in ("order", "inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, *command])
        asked = served.paths
    assert result.exit_code == USAGE, result.output
    assert "SAGA_TOKEN is not a bearer token: character 2 is '@'" in " ".join(result.output.split())
    assert not asked, asked  # refused before anything is sent


def test_a_tls_file_that_cannot_be_read_is_a_usage_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack trial: a KAFKA_SSL_CAFILE that does not exist was "cannot send to Kafka …:
    FileNotFoundError … (is the system running?", exit 3, naming neither the variable nor
    the file, though nothing was sent."""
    missing = tmp_path / "nope.pem"
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(missing))
    result = CliRunner().invoke(
        app, ["publish", "orders.commands", "--bootstrap", "127.0.0.1:1", "--key", "k", "--value", "{}"]
    )
    assert result.exit_code == USAGE, result.output
    assert f"cannot connect to Kafka: KAFKA_SSL_CAFILE={missing} cannot be read" in result.output


def test_a_broker_out_of_reach_at_the_given_bootstrap_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator trial, its broker restarting: "(is the system running? 'make run'
    starts it, its broker at 127.0.0.1:9092; …)" of the bootstrap SAGACTL_KAFKA_BOOTSTRAP
    gave (not 9092). Nothing was sent: exit 3."""
    for variable in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SAGACTL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = CliRunner().invoke(app, ["publish", "orders.commands", "--key", "k", "--value", "{}"])
    said = " ".join(result.output.split())
    assert result.exit_code == UNREACHABLE, result.output
    assert "cannot send to Kafka at 127.0.0.1:1" in said and "9092" not in said, said
    assert "as --bootstrap or SAGACTL_KAFKA_BOOTSTRAP says" in said, said


@pytest.mark.parametrize(
    ("args", "environment"),
    [
        (["--token", "x y", "forget", "alice", "--token", "t0k", "--order-url", "{base}"], {}),
        (["--order-url", "notaurl", "forget", "alice", "--token", "t0k", "--order-url", "{base}"], {}),
        (["forget", "--order-url", "notaurl", "alice", "--token", "t0k", "--order-url", "{base}"], {}),
        (["forget", "alice", "--token", "t0k", "--order-url", "{base}"], {"SAGACTL_ORDER_URL": "notaurl"}),
        (["--order-url", "{base}", "forget", "alice", "--token", "t0k"], {"SAGACTL_ORDER_URL": "notaurl"}),
    ],
    ids=["token-before", "url-before", "url-after", "url-environment", "url-environment-before"],
)
def test_a_malformed_value_a_later_one_replaces_does_not_matter(
    args: list[str], environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer trial: ``sagactl --token 'x y' health --token T`` and
    ``SAGACTL_ORDER_URL=notaurl sagactl health --order-url http://…`` were usage errors
    (exit 2): each value was checked as it was read, before the one that replaced it."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with JsonServer(FORGOTTEN, tokenless=NO_TOKEN) as order:
        result = CliRunner().invoke(app, [a.replace("{base}", order.base) for a in args])
        asked = order.paths
    assert result.exit_code == 0, result.output
    assert asked, "nothing was asked"


@pytest.mark.parametrize(
    ("args", "environment", "said"),
    [
        (
            ["forget", "alice"],
            {"SAGACTL_ORDER_URL": "notaurl"},
            "SAGACTL_ORDER_URL is not a service's base URL",
        ),
        (
            ["forget", "alice", "--order-url", "http://127.0.0.1:1", "--order-url", "x"],
            {},
            "--order-url is not a service's base URL",
        ),
        (["dlq", "--inventory-url", "x", "list"], {}, "--inventory-url is not a service's base URL"),
        (["forget", "alice"], {"SAGACTL_ORDER_URL": ""}, "SAGACTL_ORDER_URL is not a service's base URL"),
        (["forget", "alice", "--token", "t0k", "--token", "x y"], {}, "--token is not a bearer token"),
    ],
    ids=["environment", "last-of-two", "between", "empty-environment", "last-token"],
)
def test_the_value_a_command_will_use_is_checked_and_named(
    args: list[str], environment: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with JsonServer(FORGOTTEN) as served:
        urls = [f"--{name}-url={served.base}" for name in ("inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, *args])
        asked = served.paths
    assert result.exit_code == USAGE, result.output
    assert said in " ".join(result.output.split()), result.output
    assert not asked, asked  # refused before anything is sent


@pytest.mark.parametrize("command", [["kafka-acls"], ["token", "--help"], ["publish", "--help"]])
def test_a_command_that_calls_no_service_takes_any_url_and_token(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SAGACTL_ORDER_URL=notaurl sagactl kafka-acls`` was refused for a URL it does not use."""
    monkeypatch.setenv("SAGACTL_ORDER_URL", "notaurl")
    monkeypatch.setenv("SAGA_TOKEN", "x y")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "is not a service's base URL" not in result.output and "not a bearer token" not in result.output


@pytest.mark.parametrize(
    "given",
    [
        ["--value", "\udcff\udcfe{}"],
        ["--key", "\udcff", "--value", "{}"],
        ["-H", "event_type=\udcff", "--value", "{}"],
    ],
)
def test_publish_takes_an_argument_that_is_not_utf8_as_its_bytes(given: list[str]) -> None:
    """An attack trial: ``publish --value $'\\xff\\xfe{}'`` (bytes that are not UTF-8, which
    Python reads as surrogate escapes) was a UnicodeEncodeError traceback. They are the
    record's bytes: here the broker is away, so the command gets as far as sending."""
    result = CliRunner().invoke(app, ["publish", "orders.events", "--bootstrap", "127.0.0.1:1", *given])
    assert result.exit_code == UNREACHABLE, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "cannot send to Kafka at 127.0.0.1:1" in result.output


def test_a_header_name_that_is_not_utf8_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        app, ["publish", "orders.events", "--bootstrap", "127.0.0.1:1", "-H", "\udcff=x", "--value", "{}"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == USAGE and "the header name '\\xff' is not UTF-8" in said, result.output
