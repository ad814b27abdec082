"""sagactl's own words: its help reads as plain text, and an error says what to do."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from sagactl.cli import UNVERIFIED, UNVERIFIED_MARK, Output, _emit, app
from tests.jsonserver import JsonServer


@pytest.mark.parametrize("command", [[], ["token"], ["dlq"], ["audit", "verify"], ["place"]])
def test_help_is_plain_text(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "``" not in result.output  # reStructuredText's quotes, shown as they are
    short = CliRunner().invoke(app, [*command, "-h"])  # the short form says the same (it was refused)
    assert (short.exit_code, short.output) == (0, result.output)


def test_publish_help_says_where_the_body_comes_from_and_names_no_option_it_lacks() -> None:
    """``--value`` said "without it, standard input is", cut off; ``--bootstrap`` said
    "for --via kafka", an option publish does not have."""
    said = " ".join(CliRunner().invoke(app, ["publish", "--help"]).output.split())
    assert "the record's body; without it, the body is read from standard input" in said
    assert "the broker to send it to" in said
    options = said.partition("Options:")[2]
    assert "--via" not in options


def test_dlq_list_help_shows_its_status_default_as_its_choices() -> None:
    """The choices were shown in lower case and their default in upper (a re-check trial)."""
    said = " ".join(CliRunner().invoke(app, ["dlq", "list", "--help"]).output.split())
    assert "<pending|replayed|discarded|all>" in said and "[default: pending]" in said, said


def test_token_without_a_key_says_where_it_looked_and_how_to_look_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAGA_ISSUER_DIR", raising=False)
    result = CliRunner().invoke(app, ["token"])
    assert result.exit_code != 0
    said = " ".join(result.output.split())
    assert f"relative to {tmp_path}" in said
    assert "--issuer-dir" in said and "SAGA_ISSUER_DIR" in said and "make run" in said


def test_token_without_a_key_names_the_run_directories_where_a_stack_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It named only make demo's stopped key, which the stack running in another run
    directory refused (an operator trial)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAGA_ISSUER_DIR", raising=False)
    for run, running in (("trial", True), ("old", False), ("demo", False)):
        (tmp_path / ".run" / run / "keys" / "issuer").mkdir(parents=True)
        (tmp_path / ".run" / run / "keys" / "issuer" / "issuer.pem").write_text("")
        if running:
            (tmp_path / ".run" / run / "stack.json").write_text("{}")
    result = CliRunner().invoke(app, ["token"])
    assert result.exit_code != 0
    said = " ".join(result.output.split())
    assert "a stack runs with its key in .run/trial/keys/issuer (--issuer-dir .run/trial/keys/issuer)" in said
    assert ".run/old" not in said and "make demo's key" not in said


def test_sagactl_starts_without_the_servers_libraries() -> None:
    """Every sagactl command starts a Python process: importing the services' web
    framework, ORM and database driver with it took 1.3 of its 2 s (``python -X
    importtime``), for a CLI that speaks HTTP and, with ``--via kafka``, Kafka."""
    server_side = ("fastapi", "starlette", "sqlalchemy", "psycopg", "faust", "uvicorn")
    probe = (
        "import sys, sagactl.cli; "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({server_side!r}))))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.split() == []


def test_a_broker_that_cannot_be_reached_is_one_line_on_stderr() -> None:
    """sagactl's errors are one line: a command for a broker nobody listens on was followed
    by the Kafka client's own log line and its unclosed producer's warning."""
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "sagactl",
                "--token",
                "t",  # any: sagactl reads, the service verifies
                "place",
                "alice",
                "p=1",
                "--via",
                "kafka",
                "--bootstrap",
                nowhere,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert sent.returncode == 3  # could not be reached, not called wrong (2)
    (line,) = sent.stderr.splitlines()
    assert line.startswith(f"cannot send to Kafka at {nowhere}: ConnectionRefusedError: ")  # why
    # what to do: the bootstrap given is not make run's 9092
    assert "is the system running, its broker there" in line and "SAGACTL_KAFKA_BOOTSTRAP" in line


def test_an_order_refused_before_it_is_sent_names_what_is_wrong_only() -> None:
    """``place … widget=0 --via kafka`` also said the order had no lines (0 is refused
    before the order is made now, and a quantity over the limit too)."""
    result = CliRunner().invoke(
        app, ["place", "alice", "widget=10001", "--via", "kafka", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert said == "'widget=10001': a line's quantity is at most 10,000"


@pytest.mark.parametrize(
    "command", [["dlq", "show", "payment_svc", "1"], ["dlq", "list", "-s", "payment_svc"]]
)
def test_a_service_is_also_known_by_the_name_it_gives_itself(command: list[str]) -> None:
    """Logs, metrics and the dashboard say ``payment_svc``; sagactl knew only ``payment``
    ("Invalid value for 'SERVICE': one of order, inventory, payment")."""
    result = CliRunner().invoke(app, ["--payment-url", "http://127.0.0.1:1", *command])
    said = " ".join(result.output.split())
    assert "Invalid value" not in said
    assert result.exit_code == 3 and "the payment service" in said  # asked, and not reached


def test_a_usage_error_and_a_service_out_of_reach_exit_differently() -> None:
    """Both exited 2 (click's code for a usage error), so a script could not tell a
    mistake of its own from an outage; the help says which code is which."""
    nowhere = ["--order-url", "http://127.0.0.1:1"]
    called_wrong = CliRunner().invoke(app, [*nowhere, "orders", "--limit", "many"])
    not_reached = CliRunner().invoke(app, [*nowhere, "orders"])
    assert called_wrong.exit_code == 2, called_wrong.output
    assert not_reached.exit_code == 3 and "cannot reach the order service" in not_reached.output
    said = " ".join(CliRunner().invoke(app, ["--help"]).output.split())
    assert "1 when a service refused, 2 when sagactl was called wrong" in said
    assert "3 when a service or the broker could not be reached" in said


def test_an_unknown_service_is_refused_with_the_names_there_are() -> None:
    result = CliRunner().invoke(app, ["dlq", "list", "-s", "shipping"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "one of order, inventory, payment (or order_svc, inventory_svc, payment_svc)" in said


def test_a_line_stays_one_line_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    """Piped (rich's 80 columns), ``place --via kafka``'s line broke before the id a script
    would cut out of it."""
    line = f"order {'0' * 8}-0000-0000-0000-{'0' * 12} (customer alice, 2 items): APPROVED, charged 12.00"
    _emit(Output.text, {}, lambda: line)
    assert capsys.readouterr().out == line + "\n"


def test_health_with_no_service_reachable_exits_3_as_every_command_does() -> None:
    """It exited 1, the code of a service that answered and refused."""
    nowhere = [f"--{service}-url" for service in ("order", "inventory", "payment")]
    args = [arg for flag in nowhere for arg in (flag, "http://127.0.0.1:1")]
    result = CliRunner().invoke(app, [*args, "health"])
    assert result.exit_code == 3, result.output
    assert result.output.count("unreachable") == 3


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (
            ["forget", "../dead-letters/2/discard?"],
            "an id is 1-64 letters, digits and . _ : -, and not only dots",
        ),
        (["forget", ".."], "an id is 1-64 letters, digits and . _ : -, and not only dots"),
        (["place", "alice", "widget=²"], "'widget=²': expected product=quantity"),
        (
            ["place", "alice", "widget=0"],
            "'widget=0': expected product=quantity, a whole number of 1 or more",
        ),
        (
            ["place", "alice", "widget=00"],
            "'widget=00': expected product=quantity, a whole number of 1 or more",
        ),
        (
            ["place", "alice", "widget=1", "--via", "carrier-pigeon"],
            "Invalid value for '--via': http or kafka",
        ),
        (["token", "--ttl", "1e309"], "Invalid value for '--ttl'"),
        (["token", "--subject", ""], "a token's subject is printable text of 1-255 characters"),
        (["saga", ""], "Invalid value for 'order_id': an order id, or its first characters, is needed"),
        (["cancel", " "], "Invalid value for 'order_id': an order id, or its first characters, is needed"),
        (
            ["cancel", "2f07"],
            "Invalid value for 'order_id': '2f07' is not an order id or the first 8 or more",
        ),
        (["saga", "2f07fe67-zz"], "'2f07fe67-zz' is not an order id or the first 8 or more characters"),
        (["place", "alice", "widget=1", "--deadline", "nan"], "nan is not a number of seconds"),
        # a trial: an empty key was taken as none, and a retry placed the order again;
        # a product named twice was the order service's 422 (exit 1)
        (["place", "alice", "widget=1", "--idempotency-key", ""], "an empty key is no key"),
        (["place", "alice", "widget=1", "--idempotency-key", " "], "an empty key is no key"),
        (["place", "alice", "widget=1", "cup=1", "widget=2"], "'widget' is named twice"),
        # checked as balances and forget check theirs: a newcomer trial's 'a/b' was sent
        (["place", "a/b", "widget=1"], "'customer_id': an id is 1-64 letters, digits and . _ : -"),
        # a choice was refused in pydantic's words: "Value error, 'APROVED' is not one of …"
        (["orders", "--status", "APROVED"], "'--status': 'APROVED' is not one of 'pending', 'approved',"),
        (["dlq", "list", "--status", "x"], "'--status': 'x' is not one of 'pending', 'replayed',"),
        # a count was read by int(), "2_0" as 20, and refused in pydantic's words (an attack trial)
        (["audit", "list", "--limit", "2_0"], "'--limit': '2_0' is not a count: the digits 0-9 only"),
        (["orders", "--limit", "0"], "'--limit': 0 is not a count: from 1 to 1000"),
        (["orders", "--offset", "+1"], "'--offset': '+1' is not a count: the digits 0-9 only"),
        (["place", "alice", "a/b=1"], "'a/b=1': an id is 1-64 letters, digits and . _ : -"),
        (["place", "alice", "w=10001"], "'w=10001': a line's quantity is at most 10,000"),
        # …and a key with a line break was "sent, and no answer came" (exit 4) of a header
        # httpx refused to send; a key on Kafka was ignored, and a retry placed a second order
        (
            ["place", "alice", "widget=1", "--idempotency-key", "a\nb"],
            "a key must not contain the control character U+000A",
        ),
        (["place", "alice", "w=1", "--idempotency-key", "a\tb"], "the control character U+0009"),
        (["place", "alice", "w=1", "--idempotency-key", "a\u202eb"], "bidirectional control character"),
        (
            ["--token", "t", "place", "alice", "w=1", "--via", "kafka", "--idempotency-key", "k"],
            "--idempotency-key is the API's (--via http): on Kafka a command's own id is its idempotency key",
        ),
        (["publish", "orders.commands", "--tombstone"], "a tombstone deletes a key: give it one with --key"),
        (
            ["publish", "orders.commands", "--tombstone", "--key", "k", "--value", "x"],
            "--tombstone is a record with no body: give it no --value",
        ),
        (["place", "alice", "widget=1", "--deadline", "-inf"], "-inf is not a number of seconds"),
        # a newcomer trial: 0.5 was sent, and refused by the service in the API's words (exit 1)
        (["place", "alice", "widget=1", "--deadline", "0.5"], "'--deadline': 0.5 is not 1 to 86,400 seconds"),
        (["place", "alice", "w=1", "--deadline", "86401"], "86401 is not 1 to 86,400 seconds"),
        # a trial: json printed the shell lines; a bad -H or --kept did not name its option
        (["kafka-acls", "--commands", "-o", "json"], "--commands prints shell commands (text)"),
        (
            ["publish", "orders.events", "-H", "bad", "--value", "x"],
            "Invalid value for -H/--header: 'bad' is",
        ),
        (["audit", "verify", "--kept", f"foo={'ab' * 32}"], "Invalid value for --kept: 'foo="),
        (["balances", "alice", "../orders"], "Invalid value for 'customer_ids': an id is 1-64 letters"),
        # an attack trial: a port out of range was "cannot send to Kafka" (exit 3), and a
        # count of 0 or less followed for ever
        (
            [
                "--token",
                "t",
                "place",
                "alice",
                "widget=1",
                "--via",
                "kafka",
                "--bootstrap",
                "127.0.0.1:99999",
            ],
            "'127.0.0.1:99999' is not host:port (a port 1-65535)",
        ),
        (["publish", "orders.events", "--value", "x", "--bootstrap", "a:1,"], "'' is not host:port"),
        (["publish", "orders.events", "--value", "x", "--bootstrap", "http://127.0.0.1:1"], "'http://"),
        (["publish", "orders.events", "--value", "x", "--bootstrap", "127.0.0.1:1 127.0.0.1:2"], "not host"),
        (["tail", "--count", "0"], "Invalid value for '--count': 0 is not a count: 1 or more"),
        (["dlq", "replay", "inventory", "0"], "0 is not an id: from 1 to 9223372036854775807"),
        (["dlq", "show", "payment", "99999999999999999999"], "is not an id: from 1 to"),
        # an attack trial: int() read "1_0" as 10, "+1" and " 1" as 1
        (["dlq", "show", "payment", "1_0"], "'1_0' is not an id: the digits 0-9 only"),
        (["dlq", "discard", "payment", "+1"], "'+1' is not an id: the digits 0-9 only"),
        (["dlq", "replay", "payment", " 1"], "' 1' is not an id: the digits 0-9 only"),
        (["dlq", "list", "--before", "1_0"], "'1_0' is not an id: the digits 0-9 only"),  # was 10
        (["--payment-url", "notaurl", "health"], "--payment-url is not a service's base URL"),
        (["--inventory-url", "ftp://x", "dlq", "list"], "URL scheme should be 'http' or 'https'"),
        # a trial: Kafka's options on an HTTP call were ignored, the call made all the same
        (["place", "alice", "w=1", "--bootstrap", "127.0.0.1:1"], "--bootstrap is for --via kafka"),
        (["place", "alice", "w=1", "--via", "HTTP", "--bootstrap", "h:1"], "--bootstrap is for --via kafka"),
        (
            ["cancel", "0b1c2d3e-0000-4000-8000-000000000003", "--no-wait"],
            "--wait/--no-wait is for --via kafka: this goes through the API (--via http)",
        ),
        (
            ["cancel", "0b1c2d3e-0000-4000-8000-000000000003", "--wait", "--bootstrap", "h:1"],
            "--bootstrap and --wait/--no-wait is for --via kafka",
        ),
    ],
)
def test_a_bad_argument_is_refused_before_anything_is_sent(command: list[str], said: str) -> None:
    """What a helper's attack found: ``forget`` put its argument into the URL path as it
    was, so ``../dead-letters/2/discard?`` discarded a dead letter; ``widget=²`` and
    ``--ttl 1e309`` were tracebacks; ``--via`` took anything for kafka; an empty subject
    made a token every service refuses; an empty order id was "ambiguous: 170 recent
    orders start with it" (a trial); ``cancel 2f07`` cancelled the one recent order of
    two that started so, and ``--deadline nan`` was a traceback (an attack trial); a dead
    letter id of 0 was the service's 422 (exit 1) and ``--order-url notaurl`` "cannot
    reach" (exit 3; an operator trial). Each is now a usage error (exit 2)."""
    result = CliRunner().invoke(app, ["--order-url", "http://127.0.0.1:1", *command])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert said in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("subject", "roles", "refused"), [("bob", ["customer"], True), ("ops", ["operator"], False)]
)
def test_a_command_the_token_may_not_send_is_refused_before_it_is_sent(
    tmp_path: Path, subject: str, roles: list[str], refused: bool
) -> None:
    """A customer's token for another customer's order: the order service refuses the
    command, and only an operator can read why, so ``--via kafka`` waited a minute for an
    outcome that never came (a newcomer trial). An operator's token goes on to the broker
    (here nobody listens: exit 3)."""
    from saga_kit.auth import DevIssuer, write_dev_issuer

    issuer: DevIssuer = write_dev_issuer(tmp_path / "issuer")
    token = issuer.mint(subject, roles, ttl_seconds=60)
    result = CliRunner().invoke(
        app, ["--token", token, "place", "alice", "widget=1", "--via", "kafka", "--bootstrap", "127.0.0.1:1"]
    )
    said = " ".join(result.output.split())
    if refused:
        assert result.exit_code == 1, said
        assert said == (
            "the token (--token) names 'bob', a customer, who may act for itself only:"
            " the order service would refuse a command for 'alice' (forbidden)"
        )
    else:
        assert result.exit_code == 3 and "cannot send to Kafka" in said, said


@pytest.mark.parametrize("given_by", ["--token", "SAGA_TOKEN"])
def test_a_token_refused_before_it_is_sent_is_named_by_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given_by: str
) -> None:
    """The message said "the token (SAGA_TOKEN)" of a token given with --token."""
    from saga_kit.auth import DevIssuer, write_dev_issuer

    issuer: DevIssuer = write_dev_issuer(tmp_path / "issuer")
    token = issuer.mint("bob", ["customer"], ttl_seconds=60)
    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    if given_by == "SAGA_TOKEN":
        monkeypatch.setenv("SAGA_TOKEN", token)
    flag = ["--token", token] if given_by == "--token" else []
    result = CliRunner().invoke(
        app, [*flag, "place", "alice", "widget=1", "--via", "kafka", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 1, result.output
    assert " ".join(result.output.split()).startswith(f"the token ({given_by}) names 'bob', a customer")


def test_tail_waits_out_a_busy_service_and_resumes_after_the_last_event() -> None:
    """A stream that ends is followed again from its last event; a service that answers
    503 meanwhile (every stream taken, as it restarts) is asked again after its
    Retry-After, where tail used to give up (a second attack trial). An event the resumed
    stream sends again is shown once."""
    import json
    import threading
    import time

    import uvicorn
    from starlette.types import Receive, Scope, Send

    asked: list[str | None] = []

    def event(seq: int) -> bytes:
        entry = {
            "seq": seq,
            "order_id": "6f1c0000-0000-4000-8000-000000000000",
            "event_type": "OrderCreated",
            "producer": "order_svc",
            "occurred_at": "2026-12-01T12:00:00.000000+00:00",
            "compensating": False,
        }
        return f"id: {seq}\nevent: saga-event\ndata: {json.dumps(entry)}\n\n".encode()

    async def feed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        resumed = dict(scope["headers"]).get(b"last-event-id")
        asked.append(resumed.decode() if resumed else None)
        if len(asked) == 2:  # busy
            body = b'{"detail":"100 event streams are open","reason":"service_unavailable"}'
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        # a resumed stream sends again the events of the late-commit window before its
        # Last-Event-ID (order_svc.timeline.Follower.resuming): shown once
        again = event(1) if resumed else b""
        await send(
            {"type": "http.response.body", "body": again + event(len(asked)), "more_body": False}
        )  # then it ends

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(feed, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        result = CliRunner().invoke(
            app, ["--order-url", f"http://127.0.0.1:{port}", "tail", "--count", "2", "-o", "json"]
        )
    finally:
        server.should_exit = True
        thread.join(10)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines() if line.startswith("{")] == [1, 3]
    assert asked == [None, "1", "1"]  # resumed after event 1, twice: once refused, once served


#: A dead letter as ``GET /dead-letters`` lists it (``saga_kit.deadletters.DeadLetterSummary``).
LETTER = {
    "id": 7,
    "status": "PENDING",
    "reason": "bad_signature: no signature",
    "source_topic": "orders.events",
    "source_partition": 0,
    "source_offset": 42,
    "event_type": "OrderCreated",
    "order_id": None,
    "value_size": 9,
    "replay_attempts": 0,
    "created_at": "2026-12-01T12:00:00+00:00",
    "resolved_at": None,
}


@pytest.mark.parametrize("output", ["text", "json"])
def test_dlq_list_shows_the_services_reached_and_names_the_one_that_was_not(output: str) -> None:
    """With the payment service down, ``dlq list`` said only that it could not reach it:
    the other two services' dead letters went unseen."""
    import json

    from tests.jsonserver import JsonServer

    with JsonServer(json.dumps([LETTER]).encode()) as served:  # any GET answers the list
        up = served.base
        urls = ["--order-url", up, "--inventory-url", up, "--payment-url", "http://127.0.0.1:1"]
        result = CliRunner().invoke(app, [*urls, "dlq", "list", "-o", output])
    assert result.exit_code == 3, result.output
    (said,) = result.stderr.splitlines()
    assert said.startswith("cannot reach the payment service at http://127.0.0.1:1")
    assert said.endswith("; its dead letters are not listed")
    if output == "json":
        listed = json.loads(result.stdout)
        assert [(d["service"], d["id"]) for d in listed["dead_letters"]] == [("order", 7), ("inventory", 7)]
        assert list(listed["unreachable"]) == ["payment"]
        assert listed["unreachable"]["payment"].startswith("cannot reach the payment service")
    else:
        rows = [ln.split("│")[1:3] for ln in result.stdout.splitlines() if ln.count("│") > 3]
        assert [(service.strip(), letter.strip()) for service, letter in rows] == [
            ("order", "7"),
            ("inventory", "7"),
        ]


def test_dlq_list_shows_the_services_that_answer_when_one_answers_503() -> None:
    """A service whose database is away answers 503: the others' dead letters are still
    listed (it ended the command at once, exit 1, showing none)."""
    import json

    from tests.jsonserver import JsonServer

    with JsonServer(json.dumps([LETTER]).encode()) as up, JsonServer(b"", down=True) as away:
        urls = ["--order-url", up.base, "--inventory-url", away.base, "--payment-url", up.base]
        result = CliRunner().invoke(app, [*urls, "dlq", "list", "-o", "json"])
    assert result.exit_code == 1, result.output
    (said,) = result.stderr.splitlines()
    assert said == "the inventory service answered 503: away; its dead letters are not listed"
    listed = json.loads(result.stdout)
    assert [(d["service"], d["id"]) for d in listed["dead_letters"]] == [("order", 7), ("payment", 7)]
    assert (listed["unreachable"], list(listed["unavailable"])) == ({}, ["inventory"])


def _audit_page(altered: bool = False, entries: tuple[str, ...] = ('{"action":"place_order"}',)) -> bytes:
    """An audit trail of ``entries`` (oldest first) as ``GET /audit`` answers it, newest
    first; ``altered``: its first entry changed after it was hashed."""
    import json

    from saga_kit.auditchain import GENESIS, chain_hash

    links, prev = [], GENESIS
    for seq, entry in enumerate(entries, 1):
        link = chain_hash(prev, entry)
        stored = entry.replace("place", "cancel") if altered and seq == 1 else entry
        links.append({"seq": seq, "entry": stored, "prev_hash": prev.hex(), "hash": link.hex()})
        prev = link
    return json.dumps(links[::-1]).encode()


@pytest.mark.parametrize("altered", [False, True])
def test_audit_verify_verifies_the_chains_it_can_read_and_names_the_one_it_cannot(altered: bool) -> None:
    """One service down stopped the whole verification (a review): the others' chains are
    verified, a broken one is still exit 1, and otherwise the one out of reach is exit 3."""
    import json

    from tests.jsonserver import JsonServer

    with JsonServer(_audit_page()) as good, JsonServer(_audit_page(altered)) as other:
        urls = [
            "--order-url",
            good.base,
            "--inventory-url",
            other.base,
            "--payment-url",
            "http://127.0.0.1:1",
        ]
        result = CliRunner().invoke(app, [*urls, "audit", "verify", "-o", "json"])
    assert result.exit_code == (1 if altered else 3), result.output
    (said,) = result.stderr.splitlines()
    assert said.startswith("cannot reach the payment service") and said.endswith("is not verified")
    verdict = json.loads(result.stdout)
    assert list(verdict["unreachable"]) == ["payment"] and verdict["unavailable"] == {}
    verified = verdict["chains"]
    assert list(verified) == ["order", "inventory"]
    assert verified["order"]["problems"] == []
    assert bool(verified["inventory"]["problems"]) is altered


@pytest.mark.parametrize(
    ("columns", "status_lines"), [(60, ["CANCELLED", "cancelled by", "customer"]), (80, None), (200, None)]
)
def test_an_orders_reason_is_one_line_under_its_status_on_a_wide_terminal(
    monkeypatch: pytest.MonkeyPatch, columns: int, status_lines: list[str] | None
) -> None:
    """The reason under a status is one line in a column up to 30% of the terminal wide;
    in less, it folds at its words (it folded at any width, and at 80 columns with room
    to spare: newcomer trials; the longest, "cancelled by customer", at 80 in a table 74
    wide: a later one)."""
    import json

    from tests.jsonserver import JsonServer

    monkeypatch.setenv("COLUMNS", str(columns))
    order = {
        "order_id": "0b9c3c4e-8f3a-4f57-9d68-2f0f1e0b6a11",
        "customer_id": "kim",
        "status": "CANCELLED",
        "reason": "cancelled_by_customer",
        "total": "2.00",
        "items": [{"product_id": "fan", "quantity": 1}],
        "created_at": "2026-12-06T15:00:00+00:00",
    }
    with JsonServer(json.dumps([order]).encode()) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "orders"])
    assert result.exit_code == 0, result.output
    cells = [line.split("│")[3].strip() for line in result.stdout.splitlines() if line.count("│") > 3]
    assert cells == (status_lines or ["CANCELLED", "cancelled by customer"]), result.stdout


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_audit_list_keeps_an_entrys_what_in_words_at_80_columns(
    monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    """At 80 columns "what" folded mid-word (``/orders/0866988a/c`` and ``ancel``), the
    shortened id to be copied back cut in two (a newcomer trial): below 120 columns the
    role goes above the subject, in parentheses, its first line (under it, a subject that
    folded could read as the role: a re-check trial), and leaves its room to "what"."""
    import json

    from tests.jsonserver import JsonServer

    monkeypatch.setenv("COLUMNS", str(columns))
    order = "/orders/0866988a-1111-2222-3333-444455556666"
    entries = [
        {"actor": "alice", "role": "customer", "action": "POST /orders/{order_id}/cancel", "resource": order},
        {"actor": "service:inventory_svc", "role": "service", "action": "compensate X", "resource": order},
    ]
    at = {"outcome": "202", "at": "2026-12-07T06:50:00+00:00"}
    page = _audit_page(entries=tuple(json.dumps(entry | at) for entry in entries))
    with JsonServer(page) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "audit", "list", "-s", "order"])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    if columns == 80:
        assert [row[2:4] for row in rows[:3]] == [
            ["(service)", "compensate X on"],
            ["service:inven", "/orders/0866988a"],
            ["tory_svc", ""],
        ], result.stdout
        assert rows[3][2:4] == ["(customer)", "POST /orders/0866988a/cancel"], result.stdout
        assert rows[4][2] == "alice", result.stdout
        assert max(map(len, result.stdout.splitlines())) <= 80
    elif columns == 100:  # a service's subject whole, with room to spare
        assert [row[2] for row in rows[:2]] == ["(service)", "service:inventory_svc"], result.stdout
    else:
        assert rows[1][2:5] == ["alice", "customer", "POST /orders/0866988a/cancel"], result.stdout


def test_audit_list_at_80_columns_wraps_an_outcome_at_its_space_to_leave_what_its_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outcome's share of the width was 19 columns for "200" while "what" folded
    ``/dead-letters/3/re|play`` and ``InventoryRelease|d`` (a newcomer trial): below 100
    columns the outcome wraps at its space instead."""
    import json

    from tests.jsonserver import JsonServer

    monkeypatch.setenv("COLUMNS", "80")
    order = "/orders/0866988a-1111-2222-3333-444455556666"
    entries = [
        {"actor": "alice", "role": "customer", "action": "PlaceOrder via orders.commands", "resource": order}
        | {"outcome": "refused: missing_token"},
        {"actor": "operator", "role": "operator", "action": "POST /dead-letters/{letter_id}/replay"}
        | {"resource": "/dead-letters/3/replay", "outcome": "200"},
        {"actor": "service:payment_svc", "role": "service", "action": "compensate InventoryReleased"}
        | {"resource": order, "outcome": "done"},
    ]
    at = {"at": "2026-12-07T06:50:00+00:00"}
    page = _audit_page(entries=tuple(json.dumps(entry | at) for entry in entries))
    with JsonServer(page) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "audit", "list", "-s", "order"])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    what, outcome = [row[3] for row in rows], [row[4] for row in rows]
    assert "/dead-letters/3/replay" in what and "InventoryReleased on" in what, result.stdout
    assert outcome[-3:-1] == ["refused:", "missing_token"], result.stdout  # newest first
    assert max(map(len, result.stdout.splitlines())) <= 80


def test_an_order_never_priced_shows_no_total_as_a_dash() -> None:
    """Rejected before inventory priced it (no stock), an order has no total: a blank cell
    read as one not filled in (a newcomer trial)."""
    import json

    from tests.jsonserver import JsonServer

    order = {
        "order_id": "0b9c3c4e-8f3a-4f57-9d68-2f0f1e0b6a11",
        "customer_id": "kim",
        "status": "REJECTED",
        "reason": "out_of_stock",
        "total": None,
        "items": [{"product_id": "fan", "quantity": 1}],
        "created_at": "2026-12-06T15:00:00+00:00",
    }
    with JsonServer(json.dumps([order]).encode()) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "orders"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (row,) = [line.split("│")[1:-1] for line in result.stdout.splitlines() if "0b9c3c4e" in line]
    assert row[3].strip() == "—", result.stdout


def test_a_saga_timeline_counts_seconds_past_ten_of_them() -> None:
    """A timeout's cancellation read "+62345 ms", counted by eye (a newcomer trial): past
    10 s a step's time is in seconds, to a tenth."""
    import json

    from tests.jsonserver import JsonServer

    order_id = "0b9c3c4e-8f3a-4f57-9d68-2f0f1e0b6a11"

    def event(n: int, kind: str, cause: str | None, at: str) -> dict[str, Any]:
        return {
            "event_id": f"e{n}",
            "causation_id": cause,
            "event_type": kind,
            "producer": "order_svc",
            "occurred_at": f"2026-12-07T07:{at}+00:00",
            "payload": {},
            "compensating": False,
        }

    events = [
        event(1, "OrderCreated", None, "00:00.000"),
        event(2, "InventoryReserved", "e1", "00:00.040"),
        event(3, "OrderCancelled", "e2", "01:02.345"),
    ]
    owed = [
        {"action": "give it back", "because_of": "InventoryReserved", "done_by": None}
        | {"owed_by": "inventory_svc"},
        {"action": "void", "because_of": "OrderCancelled", "done_by": "PaymentVoided"}
        | {"owed_by": "payment_svc"},
    ]
    why = {"verdict": "cancelled", "owed": owed, "settled": False}
    body = {"order_id": order_id, "status": "CANCELLED", "reason": "timeout", "explanation": why}
    with JsonServer(json.dumps(body | {"trace_id": None, "events": events}).encode()) as server:
        result = CliRunner().invoke(
            app, ["--order-url", server.base, "saga", order_id], env={"COLUMNS": "200"}
        )
    assert result.exit_code == 0, result.output
    assert "InventoryReserved order_svc  +40 ms  Δ 40 ms" in result.stdout, result.stdout
    assert "OrderCancelled order_svc  +62.3 s  Δ 62.3 s" in result.stdout, result.stdout
    # what is owed and not done says "not yet" ("—" left a newcomer guessing: a trial)
    assert "✗ still owed inventory_svc: give it back (for InventoryReserved: not yet)" in result.stdout
    assert "✓ payment_svc: void (for OrderCancelled: PaymentVoided)" in result.stdout


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(9.9994, "9999 ms"), (9.9996, "10.0 s"), (599.9, "599.9 s"), (600, "10.0 min"), (86_400, "24.0 h")],
)
def test_a_timelines_time_keeps_three_or_four_figures(seconds: float, shown: str) -> None:
    """9999.6 ms read "10000 ms", and a day's deadline "86400.0 s" (a re-check trial)."""
    from sagactl.cli import _took

    start = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
    assert _took(start.isoformat(), (start + timedelta(seconds=seconds)).isoformat()) == shown


def test_health_at_80_columns_keeps_a_checks_detail_whole_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check's status is in the status column, under its service's, and its name in
    the check column: "name: mark" in one column left the detail so little room at 80
    columns that the time a circuit opened was cut in two (a newcomer trial)."""
    import json

    from tests.jsonserver import JsonServer

    monkeypatch.setenv("COLUMNS", "80")
    why = (
        "payment provider circuit open since 2026-12-07T07:00:00+00:00: ConnectError: all connection"
        " attempts failed; charges and refunds wait and are retried (probing again in 12 s)"
    )
    checks = {"database": {"ok": True}, "broker": {"ok": False, "error": "down"}}
    body = {"status": "degraded", "checks": {**checks, "payment_provider": {"ok": True, "degraded": why}}}
    with JsonServer(json.dumps(body).encode()) as server:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", server.base)]
        result = CliRunner().invoke(app, [*urls, "health"])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    assert rows[:4] == [
        ["order", "degraded", "", ""],
        ["", "ok", "database", ""],
        ["", "FAILED", "broker", "down"],
        ["", "degraded", "payment_provider", rows[3][3]],
    ], result.stdout
    detail = " ".join(row[3] for row in rows[3:] if row[0] == "" and row[2] in ("", "payment_provider"))
    assert "since 2026-12-07T07:00:00+00:00:" in detail.split(" ConnectError")[0], result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80


@pytest.mark.parametrize(("limit", "hint"), [(2, True), (3, False)])
def test_a_full_page_of_orders_says_how_to_read_the_next(limit: int, hint: bool) -> None:
    """``sagactl orders --limit 2`` gave no word that more orders exist, and no way to
    read them (a newcomer trial)."""
    import json
    import uuid

    from tests.jsonserver import JsonServer

    page = [{"order_id": str(uuid.uuid4())} for _ in range(2)]
    with JsonServer(json.dumps(page).encode()) as server:
        result = CliRunner().invoke(
            app, ["--order-url", server.base, "orders", "--limit", str(limit), "--offset", "4", "-o", "json"]
        )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == page  # the JSON alone on stdout
    assert server.paths == [f"/orders?limit={limit}&offset=4"]
    said = (
        "orders 5 to 6 shown (newest first), there may be more (the next: --offset 6; or --limit, up to 1000)"
    )
    assert result.stderr.strip() == (said if hint else ""), result.stderr
    # the first page is the newest; a page past the end says so (it said "no orders")
    with JsonServer(json.dumps(page).encode()) as server:
        first = CliRunner().invoke(app, ["--order-url", server.base, "orders", "--limit", "2", "-o", "json"])
    assert first.stderr.startswith("the newest 2 shown, there may be more (the next: --offset 2;")
    with JsonServer(b"[]") as server:
        past = CliRunner().invoke(app, ["--order-url", server.base, "orders", "--offset", "100"])
    assert (past.exit_code, past.stdout) == (0, "no orders after the newest 100\n"), past.output


def test_audit_verify_prints_each_head_hash_whole_on_a_line_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The head hashes are to be copied and kept: in the table's last column, 80 columns
    folded each across two lines (a newcomer trial). A broken chain says why."""
    from saga_kit.auditchain import GENESIS, chain_hash
    from tests.jsonserver import JsonServer

    monkeypatch.setenv("COLUMNS", "80")
    head = chain_hash(GENESIS, '{"action":"place_order"}').hex()
    with JsonServer(_audit_page()) as good, JsonServer(_audit_page(altered=True)) as other:
        urls = ["--order-url", good.base, "--inventory-url", other.base]
        result = CliRunner().invoke(app, [*urls, "audit", "verify", "-s", "order", "-s", "inventory"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80, result.stdout
    assert f"  order      {head}" in lines, result.stdout
    assert f"  inventory  {head}" in lines, result.stdout  # what the trail says now, even broken
    assert "│ BROKEN │ entry 1 does not match its hash" in result.stdout, result.stdout


def test_audit_verify_checks_a_kept_head_and_reads_any_answer() -> None:
    """An attack trial: a trail emptied and begun again verified as intact. A head hash
    kept before (``--kept``) must still be in the chain; an answer that is not audit
    entries is a broken chain as far as anyone can tell, not a traceback."""
    import json

    from saga_kit.auditchain import GENESIS, chain_hash
    from tests.jsonserver import JsonServer

    head = chain_hash(GENESIS, '{"action":"place_order"}').hex()

    def verify(served: bytes, *options: str) -> Any:
        with JsonServer(served) as server:
            return CliRunner().invoke(
                app, ["--order-url", server.base, "audit", "verify", "-s", "order", *options, "-o", "json"]
            )

    found = verify(_audit_page(), "--kept", f"order={head}")
    assert found.exit_code == 0 and json.loads(found.stdout)["chains"]["order"]["kept_heads"] == 1
    # and said: "intact" alone read as if the kept head went unchecked (a trial)
    with JsonServer(_audit_page()) as server:
        said = CliRunner().invoke(
            app, ["--order-url", server.base, "audit", "verify", "-s", "order", "--kept", f"order={head}"]
        )
    assert said.exit_code == 0 and "the kept head is in it" in said.stdout, said.stdout
    with JsonServer(_audit_page()) as server:
        unkept = CliRunner().invoke(app, ["--order-url", server.base, "audit", "verify", "-s", "order"])
    assert unkept.exit_code == 0 and "intact" in unkept.stdout and "kept head is" not in unkept.stdout
    gone = verify(_audit_page(), "--kept", f"order_svc={'ab' * 32}")
    assert gone.exit_code == 1, gone.output
    (problem,) = json.loads(gone.stdout)["chains"]["order"]["problems"]
    assert problem.startswith(f"the head hash kept before ({'ab' * 32}) is not in the chain")
    assert verify(_audit_page(), "--kept", f"inventory={'ab' * 32}").exit_code == 0  # another's
    for bad in ("order=zz", f"order={'ab' * 31}", f"nowhere={'ab' * 32}", "order"):
        refused = verify(_audit_page(), "--kept", bad)
        assert refused.exit_code == 2 and "Traceback" not in refused.output, (bad, refused.output)
    odd_entry = b'[{"seq": 1, "entry": "x", "prev_hash": "zz", "hash": ""}]'
    for answer in (b'[{"seq": 1}]', b'{"entries": []}', odd_entry):
        odd = verify(answer)
        assert odd.exit_code == 1, (answer, odd.output)
        assert json.loads(odd.stdout)["chains"]["order"]["problems"][0].startswith(
            "its answer is not audit entries"
        )


def test_dlq_list_says_whose_dead_letters_it_read_when_there_are_none() -> None:
    import json

    from tests.jsonserver import JsonServer

    with JsonServer(b"[]") as served:
        up = served.base
        urls = ["--order-url", up, "--inventory-url", up, "--payment-url", "http://127.0.0.1:1"]
        result = CliRunner().invoke(app, [*urls, "dlq", "list"])
    assert result.exit_code == 3
    assert result.stdout == "no pending dead letters in order, inventory\n"
    assert "cannot reach the payment service" in result.stderr
    # …and before which id, when --before is given (it read as none at all: a trial)
    with JsonServer(b"[]") as served:
        urls = ["--order-url", served.base, "--inventory-url", served.base, "--payment-url", served.base]
        paged = CliRunner().invoke(app, [*urls, "dlq", "list", "--before", "3"])
    assert (paged.exit_code, paged.stdout) == (0, "no pending dead letters before id 3\n"), paged.output
    # a full page says there may be more, and before which id — unless its last is the first
    # id of all (a trial was told "the next: --before 1", which can list nothing)
    for letter_id, said in ((5, "order: the newest 1 before id 9 shown, there may be more"), (1, None)):
        with JsonServer(json.dumps([{**LETTER, "id": letter_id}]).encode()) as served:
            urls = ["--order-url", served.base]
            full = CliRunner().invoke(
                app, [*urls, "dlq", "list", "-s", "order", "--limit", "1", "--before", "9"]
            )
        assert full.exit_code == 0, full.output
        assert (said in full.stderr) if said else full.stderr == "", full.stderr


@pytest.mark.parametrize(
    ("found", "code", "said"),
    [
        ([], 1, "no order id starts with 'deadbeef' among the orders this token may see"),
        (
            [
                {"order_id": "deadbeef-0000-4000-8000-000000000001"},
                {"order_id": "deadbeef-0000-4000-8000-000000000002"},
            ],
            1,
            "'deadbeef' is ambiguous: more than one order id starts with it",
        ),
    ],
)
def test_a_shortened_order_id_is_looked_up_among_every_order(found: list[Any], code: int, said: str) -> None:
    """Through the API's own prefix search, not among the 1,000 most recent: an older order
    sharing the prefix made it cancel the wrong one (an attack trial)."""
    with JsonServer(json.dumps(found).encode()) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "cancel", "deadbeef"])
    assert result.exit_code == code, result.output
    assert said in " ".join(result.output.split())
    assert server.paths == ["/orders?order_id_prefix=deadbeef&limit=2"]


def test_dead_letters_cut_at_the_limit_say_there_may_be_more() -> None:
    """``dlq list`` showed 100 of each service's 300 dead letters as if they were all (an
    attack trial): a service that answered as many as asked is named on stderr."""
    letter = {
        "id": 7,
        "status": "PENDING",
        "event_type": "OrderCreated",
        "order_id": None,
        "reason": "bad_signature: the record is not signed",
        "replay_attempts": 0,
        "created_at": "2026-12-02T10:00:00+00:00",
    }
    with JsonServer(json.dumps([letter, letter | {"id": 8}]).encode()) as server:
        base = ["--order-url", server.base, "dlq", "list", "-s", "order"]
        full = CliRunner().invoke(app, [*base, "--limit", "2"])
        room = CliRunner().invoke(app, [*base, "--limit", "3"])
    assert full.exit_code == room.exit_code == 0, (full.output, room.output)
    said = " ".join(full.output.split())
    assert "order: the newest 2 shown, there may be more (the next: --service order --before 7;" in said
    assert "there may be more" not in room.output
    with JsonServer(json.dumps([letter, letter | {"id": 8}]).encode()) as server:
        listed = CliRunner().invoke(
            app, ["--order-url", server.base, "dlq", "list", "-s", "order", "--limit", "2", "-o", "json"]
        )
    assert json.loads(listed.stdout)["limit_reached"] == ["order"]  # a script is told too
    # a page down to id 1 has none before it: neither the text nor json says there may be
    # more (json named it while the text did not: a newcomer trial)
    first = json.dumps([letter | {"id": 2}, letter | {"id": 1}]).encode()
    for output in ("text", "json"):
        with JsonServer(first) as server:
            shown = CliRunner().invoke(app, [*base[:1], server.base, *base[2:], "--limit", "2", "-o", output])
        assert "there may be more" not in shown.output, shown.output
        if output == "json":
            assert json.loads(shown.stdout)["limit_reached"] == []


@pytest.mark.parametrize(
    ("command", "document"),
    [(["dlq", "list"], []), (["audit", "verify"], []), (["health"], {"status": "ready", "checks": {}})],
)
def test_every_service_is_asked_at_once(command: list[str], document: object) -> None:
    """A command that reads each service asked them one after another: with their
    database frozen, each took its answer deadline in turn, and ``dlq list`` took 19 s
    (an attack trial); ``health`` took 6.5 s while the broker was paused, each readiness
    its 2 s (an operator trial). They are asked at once."""
    import json

    from tests.jsonserver import JsonServer

    with JsonServer(json.dumps(document).encode(), delay=1.0) as slow:
        urls = ["--order-url", slow.base, "--inventory-url", slow.base, "--payment-url", slow.base]
        result = CliRunner().invoke(app, [*urls, *command, "-o", "json"])
    assert result.exit_code == 0, result.output
    assert slow.most_in_flight == 3


@pytest.mark.parametrize(
    "command",
    [["place", "alice", "widget=1"], ["cancel", "2f07e1d2-4a64-4a4b-9b9a-0a3e5c1f8a11"]],
    ids=["place", "cancel"],
)
def test_a_command_without_a_token_is_refused_before_it_is_sent(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Without a token, ``--via kafka`` sent the command bare, the order service refused it
    (``missing_token``), and following its outcome was a 401 that did not say the command
    had been refused (a newcomer trial). It is a usage error naming where a token comes
    from, before anything is sent (``publish`` sends anything as it is)."""
    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    result = CliRunner().invoke(app, [*command, "--via", "kafka", "--bootstrap", "127.0.0.1:1"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "--via kafka needs a bearer token (--token or SAGA_TOKEN)" in said, said


def test_health_without_a_token_says_how_to_see_the_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services give the readiness reasons to an operator's token only: without one,
    or with another's (a customer's), ``health`` shows that a reason is withheld and says
    how to get an operator's token, on stderr."""
    from saga_kit.auth import WITHHELD
    from tests.jsonserver import JsonServer

    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    body = {"status": "degraded", "checks": {"payment_provider": {"ok": True, "degraded": WITHHELD}}}
    with JsonServer(json.dumps(body).encode()) as up:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", up.base)]
        result = CliRunner().invoke(app, [*urls, "health", "-o", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["payment"] == body
        assert (
            result.stderr
            == "the reasons are given to an operator's token: export SAGA_TOKEN=$(sagactl token)\n"
        )
        told = CliRunner().invoke(app, [*urls, "--token", "a.customer.token", "health", "-o", "json"])
    assert told.exit_code == 0
    assert told.stderr == (
        "the reasons are given to an operator's token: the token of --token is not an operator's;"
        " export SAGA_TOKEN=$(sagactl token)\n"
    )


@pytest.mark.parametrize(
    ("status", "body", "tokenless", "token", "said"),
    [
        (401, b"[1, 2]", (200, b"[1]"), "junk", "token refused: [1, 2]"),
        (401, b'{"detail": "expired"}', (200, b'"x"'), "junk", "token refused: expired"),
        (
            401,
            b'{"detail": "expired"}',
            (401, b"<html>no</html>"),
            "junk",
            "token refused: expired; without it, the order service answered 401: <html>no</html>",
        ),
        (200, b"[1]", None, None, "the order service answered 200: [1]"),
        (200, b"null", None, None, "the order service answered 200: null"),
        (200, b'{"status": "ready", "checks": [1]}', None, None, "answered 200"),
        (503, b'{"status": "ready", "checks": {"database": "x"}}', None, None, "answered 503"),
        (200, b'{"status": "ready", "checks": {"database": {"ok": "maybe"}}}', None, None, "answered 200"),
        (200, b'{"status": "ready", "checks": {"database": {"error": "x"}}}', None, None, "answered 200"),
        (500, b"Internal Server Error", None, "junk", "the order service answered 500: Internal Server"),
        (401, b'{"detail": "who are you"}', None, None, "the order service answered 401: who are you"),
    ],
)
def test_health_says_what_a_service_answered_that_is_not_a_readiness(
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: bytes,
    tokenless: tuple[int, bytes] | None,
    token: str | None,
    said: str,
) -> None:
    """An attack trial: a readiness answer of another shape (a 401's body a list, a 200's
    a list or null, checks that are not objects) was a traceback, a 500 or a 401 to a call
    without a token "cannot reach" (exit 3); a check whose ``ok`` was no boolean
    (``"maybe"``) was read as ok. Each is now that service's row, status ``error`` with
    what it answered, exit 1."""
    from tests.jsonserver import JsonServer

    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    ready = json.dumps({"status": "ready", "checks": {"database": {"ok": True}}}).encode()
    with JsonServer(body, status=status, tokenless=tokenless) as odd, JsonServer(ready) as fine:
        urls = ["--order-url", odd.base, "--inventory-url", fine.base, "--payment-url", fine.base]
        args = [*urls, *(["--token", token] if token else []), "health", "-o", "json"]
        result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    found = json.loads(result.stdout)
    assert found["order"]["status"] == "error" and said in found["order"]["error"], found
    assert found["inventory"]["status"] == found["payment"]["status"] == "ready"


def test_a_token_given_and_refused_is_not_answered_pass_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial: ``sagactl --token garbage health`` (and every other command) said "pass
    --token or set SAGA_TOKEN" of the token it had just passed."""
    from tests.jsonserver import JsonServer

    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    ready = json.dumps({"status": "ready", "checks": {"database": {"ok": True}}}).encode()
    with JsonServer(b'{"detail": "the token is not valid"}', status=401, tokenless=(200, ready)) as guarded:
        urls = [f"--{name}-url={guarded.base}" for name in ("order", "inventory", "payment")]
        given = CliRunner().invoke(app, [*urls, "--token", "garbage", "orders"])
        health = CliRunner().invoke(app, [*urls, "--token", "garbage", "health"])
    with JsonServer(b'{"detail": "no token"}', status=401) as guarded:
        none = CliRunner().invoke(app, ["--order-url", guarded.base, "orders"])
    for result in (given, health):
        said = " ".join(result.stderr.split())
        assert result.exit_code == 1, said
        assert "pass --token" not in said and "sagactl token` mints a development one" in said, said
    assert "answered 401: the token is not valid (the token given was refused: give another;" in " ".join(
        given.stderr.split()
    )
    assert " ".join(health.stderr.split()).startswith("the token of --token was refused (readiness shown")
    assert "answered 401: no token (pass --token or set SAGA_TOKEN;" in " ".join(none.stderr.split())


@pytest.mark.parametrize(
    ("token", "said"),
    [
        ("tök", "character 2 is 'ö'"),
        ("a\nb", "character 2 is '\\n'"),
        (" ", "character 1 is ' '"),
        ("a=b", "character 2 is '='"),
        ("==", "it is only '='"),
    ],
)
@pytest.mark.parametrize("given_by", ["--token", "SAGA_TOKEN"])
def test_a_token_no_authorization_header_can_carry_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, token: str, said: str, given_by: str
) -> None:
    """An attack trial: a non-ASCII token was httpx's UnicodeEncodeError (a traceback), a
    newline or a blank in it "cannot reach" (exit 3). Each is now one line naming where
    the token came from and what is wrong with it (not the token), exit 2, nothing sent."""
    monkeypatch.delenv("SAGA_TOKEN", raising=False)
    if given_by == "SAGA_TOKEN":
        monkeypatch.setenv("SAGA_TOKEN", token)
    flag = ["--token", token] if given_by == "--token" else []
    with JsonServer(b"[]") as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, *flag, "orders"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{given_by} is not a bearer token: {said}; one is ASCII letters"), line
    assert server.paths == []


@pytest.mark.parametrize("token", ["Bearer abc.def.ghi", "bearer abc.def.ghi"])
def test_a_token_given_with_its_scheme_says_to_leave_it_out(token: str) -> None:
    """A newcomer trial: ``--token "Bearer $T"`` (an Authorization header's value copied
    whole) was told "character 7 is ' '"."""
    with JsonServer(b"[]") as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "--token", token, "orders"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "--token is the token alone: leave out 'Bearer ' (sagactl sends it)"
    assert server.paths == []


@pytest.mark.parametrize("given", ["INVENTORY", "Inventory_Svc"])
def test_a_service_is_named_in_any_case(given: str) -> None:
    """A newcomer trial: ``dlq show INVENTORY 1`` was refused, though statuses are taken in
    any case."""
    with JsonServer(b"[]") as server:
        result = CliRunner().invoke(app, ["--inventory-url", server.base, "dlq", "list", "--service", given])
    assert result.exit_code == 0, result.output
    assert [p.split("?")[0] for p in server.paths] == ["/dead-letters"]


def test_a_token_sagactl_cannot_send_does_not_stop_it_minting_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export SAGA_TOKEN=$(sagactl token)`` replaces a bad SAGA_TOKEN (the commands that
    send none do not read it); an empty SAGA_TOKEN is none, as an empty Authorization
    header is to the services."""
    from saga_kit.auth import write_dev_issuer

    write_dev_issuer(tmp_path / "issuer")
    monkeypatch.setenv("SAGA_TOKEN", "tök")
    minted = CliRunner().invoke(app, ["token", "--issuer-dir", str(tmp_path / "issuer")])
    assert minted.exit_code == 0, minted.output
    monkeypatch.setenv("SAGA_TOKEN", "")
    with JsonServer(b"[]") as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "orders"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("path", "variable", "said"),
    [
        (
            "/orders",
            False,
            "--order-url is not a service's base URL: it ends in '/orders', one of the services'",
        ),
        ("/orders/", True, "SAGACTL_ORDER_URL is not a service's base URL: it ends in '/orders'"),
        ("/api/health", False, "it ends in '/health', one of the services' routes: give the service's root"),
        ("/order-svc", False, None),  # a gateway's prefix
        ("", False, None),
    ],
)
def test_a_base_url_that_ends_in_a_route_is_refused(
    path: str, variable: bool, said: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SAGACTL_ORDER_URL=…/orders`` called ``…/orders/orders``, and the service's 422 spoke
    of an order id never given; ``place --via kafka`` placed its order, then waited out a
    minute of "no route" 404s as "not taken yet" (newcomer trials): a usage error now,
    naming the root to give, before anything is sent."""
    with JsonServer(b"[]") as server:
        given = ["--order-url", server.base + path]
        if variable:
            monkeypatch.setenv("SAGACTL_ORDER_URL", server.base + path)
            given = []
        result = CliRunner().invoke(app, [*given, "orders"])
    if said is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2 and server.paths == [], result.output
    root = (server.base + path).rstrip("/").rsplit("/", 1)[0]  # the URL without its route
    assert said in result.stderr and result.stderr.endswith(f"({root})\n"), result.stderr


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (
            ["--subject", "alice"],
            "note: an operator's token, named 'alice'; a customer's: --subject alice --role customer",
        ),
        (["--subject", "alice", "--role", "operator"], None),
        (["--subject", "alice", "--role", "customer"], None),
        ([], None),
        (
            ["--role", "customer"],
            "note: a customer's token, named 'operator' (the default); hers: --subject <her id>",
        ),
    ],
)
def test_a_subject_without_a_role_is_said_to_be_an_operators(
    tmp_path: Path, args: list[str], note: str | None
) -> None:
    """A newcomer took ``sagactl token --subject alice`` for alice's token (an operator's,
    the default role) and listed every customer's orders with it: it says so, on stderr."""
    from saga_kit.auth import write_dev_issuer

    write_dev_issuer(tmp_path / "issuer")
    minted = CliRunner().invoke(app, ["token", "--issuer-dir", str(tmp_path / "issuer"), *args])
    assert minted.exit_code == 0, minted.output
    assert minted.stdout.count(".") == 2  # the token alone on stdout
    assert minted.stderr.strip() == (note or ""), minted.stderr


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"detail": [{"loc": 5, "msg": "x"}]}', "invalid request: [5]: x"),
        (b'{"detail": [{"loc": "where", "msg": {"a": 1}}]}', 'invalid request: where: {"a":1}'),
        (b'{"detail": [{"loc": [null, {"x": 1}, 0]}]}', 'invalid request: null.{"x":1}[0]: invalid'),
        (b'{"detail": {"a": ["b"]}}', 'answered 401: {"a":["b"]}'),
        (b'{"detail": []}', 'answered 401: {"detail": []}'),
        # the payment provider's shape (its port given as a service's printed its raw JSON)
        (b'{"error": "not_found", "message": "no route"}', "answered 401: no route ("),
    ],
)
def test_an_error_answer_of_any_shape_is_one_line(body: bytes, said: str) -> None:
    """An attack trial: a 401 whose detail was a list of objects with a ``loc`` that is no
    list was a TypeError (a traceback); a ``loc`` that was a string was spelt out letter by
    letter, and an object was shown as a Python repr."""
    with JsonServer(body, status=401) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "orders"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    (line,) = result.stderr.splitlines()
    assert line.startswith("the order service answered 401: ") and said in line, line


#: JSON nested deeper than Python's parser goes (its RecursionError).
TOO_DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("status", "body", "command", "said"),
    [
        (200, TOO_DEEP, "orders", "answered GET /orders with something other than JSON"),
        (401, TOO_DEEP, "orders", "the order service answered 401: [[[["),
        (401, b'{"detail": ' + TOO_DEEP + b"}", "orders", "the order service answered 401: {"),
        (200, TOO_DEEP, "health", "the order service answered 200: [[[["),
    ],
)
def test_an_answer_nested_too_deeply_to_read_is_one_that_is_not_json(
    status: int, body: bytes, command: str, said: str
) -> None:
    """An attack trial: a JSON answer nested 100,000 deep was a RecursionError (a
    traceback); only a ValueError was taken for an unreadable answer."""
    with JsonServer(body, status=status) as server:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", server.base)]
        result = CliRunner().invoke(app, [*urls, command, "-o", "json"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    shown = json.loads(result.stdout)["order"]["error"] if command == "health" else result.stderr
    assert said in shown


@pytest.mark.parametrize(
    ("status", "body", "command", "said"),
    [
        (500, b'{"detail": "a\\u001b[2Jb\\u009b1m"}', "orders", "answered 500: a\\x1b[2Jb\\x9b1m"),
        (
            200,
            b'{"status": "ready\\u001b[5m",'
            b' "checks": {"db\\u001b[1m": {"ok": false, "error": "\\u001b]0;x\\u0007"}}}',
            "health",
            "db\\x1b[1m",
        ),
        (
            503,
            b'{"status": "not_ready", "checks": {"db": {"ok": true, "degraded": {"why": "\\u001b[1m"}}}}',
            "health",
            '{"why":"\\u001b[1m"}',
        ),
    ],
)
def test_what_a_service_says_reaches_the_terminal_with_its_control_characters_made_visible(
    status: int, body: bytes, command: str, said: str
) -> None:
    """An attack trial: escape sequences in an error answer's detail or a readiness
    answer's checks reached the terminal as they were (a check's reason that was no string
    was a traceback)."""
    with JsonServer(body, status=status) as server:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", server.base)]
        result = CliRunner().invoke(app, [*urls, command])
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "\x1b" not in result.output and "\x9b" not in result.output and "\x07" not in result.output
    assert said in result.output, result.output


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (["dlq", "list", "-s", "order"], [LETTER | {"reason": "bad \x1b[2J", "event_type": "Odd\x9b1m"}]),
        (["dlq", "list", "-s", "order", "-o", "wide"], [LETTER | {"order_id": "\x1b[2J"}]),
        (
            ["stock"],
            [
                {
                    "product_id": "w",
                    "name": "\x1b]0;x\x07",
                    "price": "1",
                    "available": 1,
                    "reserved": 0,
                    "sold": 0,
                }
            ],
        ),
        (["balances"], [{"customer_id": "\x1b[31malice", "balance": "1"}]),
    ],
    ids=["dlq-list", "dlq-list-wide", "stock", "balances"],
)
def test_a_table_shows_what_a_service_said_with_its_control_characters_made_visible(
    command: list[str], answer: list[dict[str, Any]]
) -> None:
    """An attack trial: escape sequences in what a service answered reached the terminal."""
    with JsonServer(json.dumps(answer).encode()) as server:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", server.base)]
        result = CliRunner().invoke(app, [*urls, *command])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x9b" not in result.output and "\x07" not in result.output
    assert "\\x1b" in result.output or "\\x9b" in result.output, result.output


def test_dlq_show_shows_a_headers_layout_escaped() -> None:
    """A newline in a header's value split its row, and a name's last space or a value's
    tab showed nothing (a re-check attack trial)."""
    view = {"text": None, "base64": None, "size": 0, "truncated": False}
    letter: dict[str, Any] = {
        **dict.fromkeys(("status", "reason", "event_type", "order_id", "created_at", "resolved_at")),
        "replay_attempts": 0,
        **{"source_topic": "orders.events", "source_partition": 0, "source_offset": 1},
        "key": {**view, "text": "k "},
        "headers": [
            {"key": "x-n", "value": {**view, "text": "line1\nline2"}},
            {"key": "x-s ", "value": {**view, "text": "v\t"}},
        ],
        "headers_total": 2,
        "value": view,
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        result = CliRunner().invoke(app, ["--payment-url", server.base, "dlq", "show", "payment", "1"])
    assert result.exit_code == 0, result.output
    for shown in ("k\\x20", "line1\\nline2", "header x-s\\x20", "v\\t"):
        assert shown in result.output, (shown, result.output)


def _listed(letter: object, args: list[str]) -> Any:
    """sagactl's answer to ``args`` ("{}": the URL) from a server that answers ``[letter]``."""
    with JsonServer(json.dumps([letter]).encode()) as server:
        return CliRunner().invoke(app, [a.format(server.base) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("unverified", [True, False])
def test_dead_letters_say_a_forged_records_order_is_its_claim(unverified: bool) -> None:
    """A record whose signature did not verify names whatever order its writer chose: its
    letter's event type and order id are marked as its claim (they read as the saga it
    belonged to), and only its."""
    order_id = "0f0e0d0c-0000-4000-8000-000000000001"
    view = {"text": "{}", "base64": None, "size": 2, "truncated": False}
    letter: dict[str, Any] = {
        **LETTER,
        "reason": "bad_signature: the record is not signed" if unverified else "handler_error: x",
        "order_id": order_id,
        "unverified": unverified,
        "key": None,
        "headers": [],
        "headers_total": 0,
        "value": view,
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        shown = CliRunner().invoke(
            app, ["--payment-url", server.base, "dlq", "show", "payment", "7"], env={"COLUMNS": "160"}
        )
    listed, wide = (
        _listed(letter, ["--payment-url", "{}", "dlq", "list", "-s", "payment", "-o", output])
        for output in ("text", "wide")
    )
    assert shown.exit_code == listed.exit_code == wide.exit_code == 0, (shown.output, listed.output)
    assert (f"{order_id} {UNVERIFIED_MARK}" in wide.output) is unverified, wide.output
    rows = {line.split()[1]: line for line in shown.output.splitlines() if line.startswith("│ ")}
    for key, value in (("event_type", "OrderCreated"), ("order_id", order_id)):
        claim = f"{value} {UNVERIFIED}" if unverified else f"{value} "
        assert claim in rows[key], (key, shown.output)
    assert (f"order 0f0e0d0c {UNVERIFIED_MARK}" in listed.output) is unverified, listed.output
    assert (f"OrderCreated {UNVERIFIED_MARK}" in listed.output) is unverified, listed.output  # its type too
    assert "order 0f0e0d0c" in listed.output


def test_dlq_show_tells_an_escape_from_the_text_of_one() -> None:
    """A key, a header's name or value with an ESC, which the service escapes (and gives in
    base64 too), and with the four characters ``\\x1b`` were shown alike (an attack trial)."""
    esc = {"text": "k\\x1b", "base64": base64.b64encode(b"k\x1b").decode(), "size": 2, "truncated": False}
    text = {"text": "k\\x1b", "base64": None, "size": 5, "truncated": False}
    letter: dict[str, Any] = {
        **dict.fromkeys(("status", "reason", "event_type", "order_id", "created_at", "resolved_at")),
        "replay_attempts": 0,
        **{"source_topic": "orders.events", "source_partition": 0, "source_offset": 1},
        "key": esc,
        "headers": [
            {"key": "h\\x1b", "key_base64": base64.b64encode(b"h\x1b").decode(), "value": text},
            {"key": "h\\x1b", "value": esc},
        ],
        "headers_total": 2,
        "value": None,
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        result = CliRunner().invoke(app, ["--payment-url", server.base, "dlq", "show", "payment", "1"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    rows = [re.split(r"\s{2,}", line.strip("│ ")) for line in result.output.splitlines()]
    assert ["key", "k\\x1b"] in rows, result.output
    assert ["header h\\x1b", "k\\\\x1b"] in rows and ["header h\\\\x1b", "k\\x1b"] in rows, result.output


def test_dlq_show_says_a_header_name_is_the_start_of_a_longer_one() -> None:
    """A name cut to the service's preview ended in an ellipsis, which a name may end with
    (a trial): ``key_truncated`` is said beside it."""
    text = {"text": "v", "base64": None, "size": 1, "truncated": False}
    letter: dict[str, Any] = {
        **dict.fromkeys(("status", "reason", "event_type", "order_id", "created_at", "resolved_at")),
        "replay_attempts": 0,
        **{"source_topic": "orders.events", "source_partition": 0, "source_offset": 1},
        "key": None,
        "headers": [
            {"key": "cut…", "value": text, "key_truncated": True},
            {"key": "whole…", "value": text},
        ],
        "headers_total": 2,
        "value": None,
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        result = CliRunner().invoke(
            app, ["--payment-url", server.base, "dlq", "show", "payment", "1"], env={"COLUMNS": "120"}
        )
    assert result.exit_code == 0, result.output
    lines = [line.strip("│ ") for line in result.output.splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith("header cut…"))
    # the name's column folds at 32: the note goes on below it
    assert " ".join(lines[at].split()) == "header cut… (the start of a v", result.output
    assert lines[at + 1] == "longer name)", result.output
    assert " ".join(lines[at + 2].split()) == "header whole… v", result.output


@pytest.mark.parametrize("command", [[], ["dlq"], ["audit"]])
def test_a_group_without_its_command_is_a_usage_error_that_shows_its_help(command: list[str]) -> None:
    """``sagactl`` alone, like ``sagactl dlq``, shows what it takes on stderr and exits 2,
    a usage error (click's NoArgsIsHelpError): a script's missing word is not a success."""
    result = CliRunner().invoke(app, command, prog_name="sagactl")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"Usage: {' '.join(['sagactl', *command])} [OPTIONS] COMMAND [ARGS]...")
    assert "Commands:" in result.stderr


@pytest.mark.parametrize(
    ("command", "answer", "shown"),
    [
        (["balances"], [{"customer_id": "alice", "balance": "[/]"}], "[/]"),
        (
            ["stock"],
            [{"product_id": "w", "name": "n", "price": "[bold]1", "available": 1, "reserved": 0, "sold": 0}],
            "[bold]1",
        ),
    ],
    ids=["closing-tag", "opening-tag"],
)
def test_a_table_shows_what_a_service_said_as_it_is_not_as_markup(
    command: list[str], answer: list[dict[str, Any]], shown: str
) -> None:
    """A cell given as a plain string was read as rich's markup: a closing tag with none
    open was a ``MarkupError`` traceback, an opening one vanished and styled the rest."""
    with JsonServer(json.dumps(answer).encode()) as server:
        urls = [arg for s in ("order", "inventory", "payment") for arg in (f"--{s}-url", server.base)]
        result = CliRunner().invoke(app, [*urls, *command])
    assert result.exit_code == 0, result.exception
    assert shown in result.output, result.output


@pytest.mark.parametrize(
    ("command", "look"),
    [
        (["forget", "alice"], "forgetting again is safe: sagactl forget alice"),
        (["dlq", "replay", "order", "7"], "see whether it was: sagactl dlq show order 7"),
        (["dlq", "discard", "order", "7"], "see whether it was: sagactl dlq show order 7"),
        (
            ["place", "alice", "w=1", "--idempotency-key", "k-1"],
            "the same command with --idempotency-key k-1 tells, placing it once at most",
        ),
        # quoted for the shell it is pasted into (a trial)
        (
            ["place", "alice", "w=1", "--idempotency-key", "my key; rm x"],
            "the same command with --idempotency-key 'my key; rm x' tells, placing it once at most",
        ),
    ],
    ids=["forget", "replay", "discard", "place", "place-quoted"],
)
def test_a_call_sent_and_not_answered_is_in_doubt_not_unreachable(command: list[str], look: str) -> None:
    """An attack trial: a frozen service took a forget and a replay and did them when it
    woke, while sagactl had said "cannot reach … is the system running?", exit 3. A call
    that changes something, sent and not answered, may have been carried out: exit 4,
    and how to learn its outcome safely. A GET not answered is still exit 3."""
    from sagactl.cli import IN_DOUBT, UNREACHABLE

    with JsonServer(b"{}", hangup=True) as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, *command])
        read = CliRunner().invoke(app, ["--order-url", server.base, "orders"])
    assert result.exit_code == IN_DOUBT, result.output
    said = " ".join(result.stderr.split())
    assert said.startswith("the order service at http://127.0.0.1:") and "may have been carried out" in said
    assert "cannot reach" not in said and look in said, said
    assert read.exit_code == UNREACHABLE and "did not answer GET /orders" in " ".join(read.stderr.split())
    with JsonServer(b"{}") as up:  # nothing listens where a server was: nothing was sent
        gone = up.base
    refused = CliRunner().invoke(app, ["--order-url", gone, "forget", "alice"])
    assert refused.exit_code == UNREACHABLE and "cannot reach the order service" in refused.stderr


def test_forgetting_nothing_does_not_claim_an_earlier_forget() -> None:
    """An attack trial: "0 data key(s) destroyed (none was left)" for a customer id mistyped
    read as if it had been forgotten before; the service cannot tell which."""
    with JsonServer(b'{"customer_id": "ALICE", "keys_destroyed": 0}') as server:
        result = CliRunner().invoke(app, ["--order-url", server.base, "forget", "ALICE"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "none was left" not in said
    assert "none live: no personal data of this customer here, or forgotten before" in said


def test_tail_shows_whatever_the_stream_sends_without_driving_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An attack trial's leftover: ``tail -o json`` printed the stream's data as it came
    (control characters and all), and an entry of another shape was a traceback."""
    from sagactl.cli import Output, _show_saga_event

    entry = {
        "occurred_at": "2026-12-04T10:00:00.123456+00:00",
        "order_id": "0f0e0d0c-0000-4000-8000-000000000000",
        "event_type": "OrderCreated\u001b[2J",
        "compensating": False,
        "producer": "order_svc",
    }
    odd = ('{"event_type": "Odd\x1b[2J"}', "not json \x1b]0;x\x07", '{"a": 1}', "[]")
    for data in (json.dumps(entry), *odd):
        for output in (Output.json, Output.text):
            _show_saga_event(data, output)
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown, shown
    assert "(not a saga event)" in shown and "OrderCreated\\x1b[2J" in shown  # text
    assert '"event_type": "OrderCreated\\u001b[2J"' in shown and '{"not_json": "not json \\\\x1b' in shown


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "file"])
def test_tail_cuts_an_events_brief_to_a_terminal_alone_and_keeps_its_reason(
    terminal: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: at 80 columns a PaymentFailed showed ``amount=50.00 r…`` (the payload's
    order), and ``tail > file`` cut every line to 80 columns too; a newcomer trial read
    ``reason=insuf…`` at 80 columns."""
    import sagactl.cli
    from sagactl.cli import _show_saga_event

    monkeypatch.setattr(sagactl.cli, "console", Console(markup=False, width=80, force_terminal=terminal))
    reason = "card_declined: the issuer said do not honour, try another card"
    entry = {
        "occurred_at": "2026-12-04T10:00:00.123456+00:00",
        "order_id": "0f0e0d0c-0000-4000-8000-000000000000",
        "event_type": "PaymentFailed",
        "compensating": False,
        "producer": "payment_svc",
        "payload": {"order_id": "0f0e0d0c", "amount": "50.00", "reason": reason},
    }
    _show_saga_event(json.dumps(entry), Output.text)
    line = Text.from_ansi(capsys.readouterr().out).plain.rstrip("\n")
    assert "\n" not in line, line
    if terminal:  # the producer, which the event type implies, gives its room to the brief
        assert "PaymentFailed                reason=card_declined: the " in line, line
        assert len(line) == 80 and line.endswith("…") and "payment_svc" not in line, line
    else:
        assert line.endswith(f"PaymentFailed               payment_svc  reason={reason} amount=50.00"), line


def test_a_service_that_took_the_call_and_timed_out_did_not_answer_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attack trial froze a service (SIGSTOP): forget and dlq replay were "cannot reach
    … timed out (is the system running?)", exit 3, and both were carried out when it woke.
    A read that times out was sent: a forget or a replay is in doubt (exit 4) "within N s",
    how to learn its outcome beside it; a GET says it did not answer, not that it could
    not be reached."""
    import sagactl.cli
    from sagactl.cli import IN_DOUBT, UNREACHABLE

    monkeypatch.setattr(sagactl.cli, "HTTP_TIMEOUT", 0.3)
    with JsonServer(b"{}", delay=1.0) as frozen:
        urls = ["--order-url", frozen.base]
        forget = CliRunner().invoke(app, [*urls, "forget", "alice"])
        replay = CliRunner().invoke(app, [*urls, "dlq", "replay", "order", "1"])
        read = CliRunner().invoke(app, [*urls, "orders"])
    for result, then in [
        (forget, "forgetting again is safe: sagactl forget alice"),
        (replay, "see whether it was: sagactl dlq show order 1"),
    ]:
        said = " ".join(result.stderr.split())
        assert result.exit_code == IN_DOUBT, said
        assert "did not answer within 0.3 s: it may have been carried out" in said and then in said, said
        assert "cannot reach" not in said and "is the system running" not in said, said
    said = " ".join(read.stderr.split())
    assert read.exit_code == UNREACHABLE, said
    assert said.endswith("did not answer GET /orders within 0.3 s"), said


@pytest.mark.parametrize("command", [["health", "-o", "json"], ["tail"]], ids=["health", "tail"])
def test_a_service_that_took_the_connection_is_not_one_that_cannot_be_reached(command: list[str]) -> None:
    """health and tail said "cannot reach … (is the system running?)" of a service that
    took the request and closed without an answer (or, frozen, did not answer): it did
    not answer. Exit 3 still: it is a read, harmless to ask again."""
    with JsonServer(b"{}", hangup=True) as gone:
        urls = [f"--{name}-url={gone.base}" for name in ("order", "inventory", "payment")]
        result = CliRunner().invoke(app, [*urls, *command])
    said = result.stderr if command == ["tail"] else json.loads(result.stdout)["order"]["error"]
    said = " ".join(said.split())
    assert result.exit_code == 3, said
    assert said.startswith(f"the order service at {gone.base} did not answer"), said
    assert "cannot reach" not in said and "is the system running" not in said, said


def _serve_one_by_one(*answers: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """A server on a free port of 127.0.0.1 that takes a connection for each of ``answers``,
    one after another, reads its request and hands the socket to the answer (which writes
    what it likes, when it likes); its base URL and the thread serving it, which ends
    after the last answer or 3 s without a connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(3.0)

    def serve() -> None:
        with listener:
            for answer in answers:
                try:
                    conn = listener.accept()[0]
                except TimeoutError:
                    return
                with conn:
                    conn.recv(65536)
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


def test_tail_against_a_service_that_never_answers_says_so_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tail waited for the stream's status and headers with no read timeout: a service
    that took the connection and never answered held it forever (it ends here after 3 s,
    so that the test fails instead of hanging). It says what every other command says of
    such a service, "did not answer … within N s", exit 3."""
    import sagactl.cli
    from sagactl.cli import UNREACHABLE

    monkeypatch.setattr(sagactl.cli, "HTTP_TIMEOUT", 0.3)
    base, served = _serve_one_by_one(lambda conn: time.sleep(3.0))
    started = time.monotonic()
    result = CliRunner().invoke(app, ["--order-url", base, "tail"])
    took = time.monotonic() - started
    served.join(5)
    said = " ".join(result.stderr.split())
    assert result.exit_code == UNREACHABLE, said
    assert said == f"the order service at {base} did not answer GET /saga-events/stream within 0.3 s", said
    assert took < 2.5, took


@pytest.mark.parametrize(
    ("command", "answer", "asked"),
    [
        (["health"], b'{"status": "ready", "checks": {}}', "GET /health/ready"),
        (["dlq", "list"], b"[]", "GET /dead-letters"),
        (["audit", "verify"], b"[]", "GET /audit"),
    ],
    ids=["health", "dlq-list", "audit-verify"],
)
def test_json_tells_a_service_that_did_not_answer_from_one_that_cannot_be_reached(
    command: list[str], answer: bytes, asked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -o json, a service that took the connection and never answered was
    ``unreachable``, as one nobody listens for, while the text said "did not answer":
    it is ``not_answering`` (health: its status; dlq list, audit verify: a key beside
    ``unreachable``), the one that cannot be reached ``unreachable`` still. Exit 3 both."""
    import sagactl.cli
    from sagactl.cli import UNREACHABLE

    monkeypatch.setattr(sagactl.cli, "HTTP_TIMEOUT", 0.3)
    silent, served = _serve_one_by_one(lambda conn: time.sleep(1.0))
    with JsonServer(answer) as up:
        urls = ["--order-url", silent, "--inventory-url", up.base, "--payment-url", "http://127.0.0.1:1"]
        result = CliRunner().invoke(app, [*urls, *command, "-o", "json"])
    served.join(5)
    assert result.exit_code == UNREACHABLE, result.output
    found = json.loads(result.stdout)
    did_not_answer = f"the order service at {silent} did not answer"
    if command == ["health"]:
        assert {name: body["status"] for name, body in found.items()} == {
            "order": "not_answering",
            "inventory": "ready",
            "payment": "unreachable",
        }, found
        assert found["order"]["error"] == f"{did_not_answer} within 0.3 s", found
        assert found["payment"]["error"].startswith("cannot reach the payment service"), found
    else:
        assert list(found["unreachable"]) == ["payment"], found
        assert found["unreachable"]["payment"].startswith("cannot reach the payment service"), found
        assert found["not_answering"] == {"order": f"{did_not_answer} {asked} within 0.3 s"}, found
        assert found["unavailable"] == {}, found


def test_tail_waits_on_a_quiet_stream_for_as_long_as_it_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first answer has a deadline: a stream that has begun and sends nothing
    for longer than the timeout (no saga is running) is followed on, not given up."""
    import sagactl.cli

    monkeypatch.setattr(sagactl.cli, "HTTP_TIMEOUT", 0.3)
    entry = {
        "seq": 1,
        "order_id": "6f1c0000-0000-4000-8000-000000000000",
        "event_type": "OrderCreated",
        "producer": "order_svc",
        "occurred_at": "2026-12-01T12:00:00.000000+00:00",
        "compensating": False,
    }

    def quiet_then_one_event(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        time.sleep(1.2)  # four timeouts of silence
        conn.sendall(f"id: 1\nevent: saga-event\ndata: {json.dumps(entry)}\n\n".encode())
        time.sleep(0.5)  # tail ends after its one event, before the stream does

    def gone(conn: socket.socket) -> None:  # a stream given up is followed again: refused here
        conn.sendall(b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    base, served = _serve_one_by_one(quiet_then_one_event, gone)
    result = CliRunner().invoke(app, ["--order-url", base, "tail", "--count", "1", "-o", "json"])
    served.join(5)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1]
    assert "broke" not in result.stderr and "resuming" not in result.stderr, result.stderr


@pytest.mark.parametrize("wait", [["--wait"], []], ids=["wait", "default"])
def test_place_through_the_api_waits_for_the_outcome_only_when_asked(wait: list[str]) -> None:
    """``place --via http`` answers the API's PENDING (the saga under way) and says how to
    follow it; with --wait, the outcome, as ``--via kafka`` gives by default."""
    order_id = "0b1c2d3e-0000-4000-8000-000000000001"
    pending = json.dumps({"order_id": order_id, "status": "PENDING", "reason": None}).encode()
    rejected = json.dumps({"order_id": order_id, "status": "REJECTED", "reason": "out_of_stock"}).encode()
    done = threading.Event()
    with JsonServer(pending) as order:

        def the_saga_ends() -> None:  # after the POST and one GET that still sees it PENDING
            while len(order.paths) < 2 and not done.wait(0.01):
                pass
            order.jwks = rejected

        threading.Thread(target=the_saga_ends, daemon=True).start()
        result = CliRunner().invoke(app, ["--order-url", order.base, "place", "alice", "cup=1", *wait])
        paths = order.paths
        done.set()
    assert result.exit_code == 0, result.output
    if wait:
        assert f"order {order_id}: REJECTED (out_of_stock)" in result.stdout, result.output
        assert paths[0] == "/orders" and set(paths[1:-1]) == {f"/orders/{order_id}"}, paths
        assert paths[-1] == f"/orders/{order_id}/saga", paths  # once, ended: is it settled?
        assert "follow it" not in result.output
    else:
        assert f"order {order_id}: PENDING" in result.stdout, result.output
        assert paths == ["/orders"] and f"follow it: sagactl saga {order_id[:8]}" in result.output


def test_a_wait_for_the_outcome_outlasts_an_order_service_away() -> None:
    """An attack trial killed the order service during ``place --wait``: sagactl said
    "cannot reach the order service" (exit 3) of an order it had placed, which went on to
    be APPROVED. A wait asks again until its deadline while the service is away (here:
    503 to every request, as a service restarting is)."""
    order_id = "0b1c2d3e-0000-4000-8000-000000000002"
    pending = json.dumps({"order_id": order_id, "status": "PENDING", "reason": None}).encode()
    approved = json.dumps({"order_id": order_id, "status": "APPROVED", "reason": None}).encode()
    done = threading.Event()
    with JsonServer(pending) as order:

        def away_then_back() -> None:  # from the first poll (the POST answered); back after three more
            while len(order.paths) < 2 and not done.wait(0.01):
                pass
            order.down = True
            while len(order.paths) < 5 and not done.wait(0.01):
                pass
            order.jwks, order.down = approved, False

        threading.Thread(target=away_then_back, daemon=True).start()
        result = CliRunner().invoke(app, ["--order-url", order.base, "place", "alice", "cup=1", "--wait"])
        done.set()
        polls = len(order.paths) - 1
    assert result.exit_code == 0, result.output
    assert f"order {order_id}: APPROVED" in result.stdout, result.output
    assert polls >= 4, polls


@pytest.mark.parametrize("status", ["CANCELLED", "REJECTED"])
def test_cancel_on_kafka_of_an_order_that_cannot_be_cancelled_sends_nothing(status: str) -> None:
    """An attack trial: a customer's ``cancel --via kafka`` of an order cancelled before
    printed CANCELLED, exit 0, as if its own command (refused: order_not_cancellable,
    which only an operator may read) had done it. The order's status is asked first, as
    the order service's rule judges it; nothing is sent (no broker listens here: a send
    would be exit 3)."""
    order_id = "0b1c2d3e-0000-4000-8000-000000000003"
    ended = json.dumps({"order_id": order_id, "status": status, "reason": "timeout"}).encode()
    with JsonServer(ended) as order:
        args = ["--order-url", order.base, "--token", "t", "cancel", order_id, "--via", "kafka"]
        result = CliRunner().invoke(app, [*args, "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert (
        said == f"order {order_id} is {status}: only a PENDING or APPROVED order can be cancelled"
        " (order_not_cancellable; nothing was sent)"
    )
    assert order.paths == [f"/orders/{order_id}"]


def test_a_command_with_a_token_the_order_service_refuses_is_not_sent() -> None:
    """A trial: ``place --via kafka`` with an expired token sent the command (refused for
    its token, which only an operator may read), then said the order service's 401 while
    following it. The token is tried first, where the command will be followed; nothing
    is sent (no broker listens here: a send would be exit 3)."""
    refused = json.dumps({"detail": "the token has expired", "reason": "invalid_token"}).encode()
    with JsonServer(refused, status=401) as order:
        args = ["--order-url", order.base, "--token", "x.y.z", "place", "alice", "w=1", "--via", "kafka"]
        result = CliRunner().invoke(app, [*args, "--bootstrap", "127.0.0.1:1"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, said
    assert "the token has expired" in said and said.endswith(
        "; a command would be refused with it: nothing was sent"
    )
    assert len(order.paths) == 1 and order.paths[0].startswith("/commands/"), order.paths


def test_a_command_whose_dead_letter_was_discarded_is_not_called_held() -> None:
    """``sagactl command`` said "held" of every dead-lettered command, a discarded one's
    too, once the order service found those (a review)."""
    command_id = "0b1c2d3e-0000-4000-8000-000000000004"
    detail = "dead letter 3 of order_svc, discarded, neither taken nor refused: not JSON"
    view = {"command_id": command_id, "order_id": command_id, "outcome": "dead_lettered", "detail": detail}
    with JsonServer(json.dumps(view).encode()) as order:
        result = CliRunner().invoke(app, ["--order-url", order.base, "--token", "t", "command", command_id])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"command {command_id}: dead-lettered: {detail}\n"


def test_tail_says_once_that_its_stream_broke_and_when_it_is_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart of the order service was six lines from tail, one per try to resume (a
    trial), then two (the stream broken, then connections refused: another): said once,
    the first reason, then "resumed"."""
    import sagactl.cli

    monkeypatch.setattr(sagactl.cli.time, "sleep", lambda _: None)
    entry = {
        "occurred_at": "2026-12-06T15:00:00.000+00:00",
        "order_id": "o",
        "producer": "order_svc",
        "event_type": "OrderCreated",
        "compensating": False,
    }

    def sse(*ids: int) -> bytes:
        return b"".join(
            f"id: {i}\nevent: saga-event\ndata: {json.dumps({**entry, 'seq': i})}\n\n".encode() for i in ids
        )

    def broken(conn: socket.socket) -> None:  # a chunk, then the connection ends without the last
        event = sse(1)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        conn.sendall(head + b"%x\r\n" % len(event) + event + b"\r\n")

    def hang_up(conn: socket.socket) -> None:
        pass  # closed without an answer: "Server disconnected without sending a response"

    def back(conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        conn.sendall(head + sse(1, 2))

    base, served = _serve_one_by_one(broken, hang_up, hang_up, back)
    result = CliRunner().invoke(app, ["--order-url", base, "tail", "--count", "2", "-o", "json"])
    served.join(5)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2]
    said = result.stderr.splitlines()
    assert len(said) == 2 and said[0].startswith("the event stream broke (peer closed"), said
    assert said[1] == "resumed", said


def test_tail_shows_beside_an_event_what_its_timeline_shows() -> None:
    """A cancellation for a timeout read as one by the customer, and no amount was shown
    (a newcomer trial): the line carries the payload's reason, total or amount, as ``sagactl
    saga`` does, and nothing else of it."""
    entries = [
        {"event_type": "OrderCancelled", "payload": {"customer_id": "c9", "reason": "timeout"}},
        {"event_type": "PaymentCompleted", "payload": {"customer_id": "c9", "amount": "12.50"}},
    ]
    common = {"order_id": "o", "producer": "p", "occurred_at": "2026-12-06T15:00:00.000+00:00"}
    data = [json.dumps({**e, **common, "seq": i, "compensating": False}) for i, e in enumerate(entries, 1)]
    body = b"".join(f"id: {i}\nevent: saga-event\ndata: {d}\n\n".encode() for i, d in enumerate(data, 1))

    def stream(conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        conn.sendall(head + body)

    base, served = _serve_one_by_one(stream)
    result = CliRunner().invoke(app, ["--order-url", base, "tail", "--count", "2"], env={"COLUMNS": "200"})
    served.join(5)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("OrderCancelled              p  reason=timeout"), lines
    assert lines[1].endswith("PaymentCompleted            p  amount=12.50"), lines
    assert "c9" not in result.stdout
    base, served = _serve_one_by_one(stream)  # on a narrow terminal, cut to fit
    terminal = {"COLUMNS": "60", "TTY_COMPATIBLE": "1"}  # rich's: the output is a terminal
    narrow = CliRunner().invoke(app, ["--order-url", base, "tail", "--count", "2"], env=terminal)
    served.join(5)
    # the producer gives its room to the brief
    assert [line[44:] for line in narrow.stdout.splitlines()] == ["  reason=timeout", "  amount=12.50"], (
        narrow.stdout
    )


def test_tail_without_from_start_shows_no_event_from_before_it_began_when_it_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resumed stream sends again the events of the 30 s below where it resumes, so that
    one committed late is not skipped: those from before tail began were shown as new,
    out of order (a trial). One that occurred since is still shown."""
    import sagactl.cli

    monkeypatch.setattr(sagactl.cli.time, "sleep", lambda _: None)
    now, old = datetime.now(UTC), datetime.now(UTC) - timedelta(seconds=20)

    def sse(*events: tuple[int, datetime]) -> bytes:
        entry = {"order_id": "o", "producer": "p", "event_type": "OrderCreated", "compensating": False}
        data = [(i, json.dumps({**entry, "seq": i, "occurred_at": t.isoformat()})) for i, t in events]
        return b"".join(f"id: {i}\nevent: saga-event\ndata: {d}\n\n".encode() for i, d in data)

    def stream(*events: tuple[int, datetime]) -> Callable[[socket.socket], None]:
        def answer(conn: socket.socket) -> None:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            conn.sendall(head + sse(*events))

        return answer

    # tail begins at event 5; resumed, the stream sends 3 (before tail began), 4 (committed
    # late, occurred since), 5 again and 6
    later = now + timedelta(seconds=1)
    base, served = _serve_one_by_one(stream((5, later)), stream((3, old), (4, later), (5, later), (6, later)))
    result = CliRunner().invoke(app, ["--order-url", base, "tail", "--count", "3", "-o", "json"])
    served.join(5)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [5, 4, 6]


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["audit", "--help"], ["place", "-h"]])
def test_help_whose_reader_is_gone_ends_as_sigpipe_would(args: list[str]) -> None:
    """``sagactl --help | head -1``: exit 1, click's (an attack trial: the sub-commands'
    help already gave 141, the top level's is printed before the command runs)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagactl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before a line is written
    said = proc.stderr.read()
    assert (proc.wait(timeout=60), said) == (141, ""), args


def test_a_cell_shows_what_shows_nothing_escaped() -> None:
    """Two audit entries, ``/orders/x/cancel`` and one with U+200B after the x, looked alike
    (an attack trial); U+2028 broke a table's row in two (another). Text in other scripts
    is shown as it is."""
    from sagactl.cli import _text, _value

    assert _text("/orders/x\u200b/cancel").plain == "/orders/x\\u200b/cancel"
    assert _text("a\u2028b\u2029c\ufeffd\u00ade\u200ff").plain == "a\\u2028b\\u2029c\\ufeffd\\xade\\u200ff"
    assert _text("Zoë, 漢字, مرحبا").plain == "Zoë, 漢字, مرحبا"
    # what else shows nothing, or only a space (a re-check trial): the grapheme joiner,
    # variation selectors, Hangul fillers, a blank braille pattern, a Khmer and a Mongolian
    # mark, spaces that are not U+0020, and a last space
    for shows_nothing, escaped in (
        ("\u034f", "\\u034f"),
        ("\ufe0f", "\\ufe0f"),
        ("\U000e0100", "\\U000e0100"),
        ("\u115f\u1160\u3164\uffa0", "\\u115f\\u1160\\u3164\\uffa0"),
        ("\u2800", "\\u2800"),
        ("\u17b4\u180b", "\\u17b4\\u180b"),
        ("\u00a0\u2003\u3000", "\\xa0\\u2003\\u3000"),
    ):
        assert _text(f"wid{shows_nothing}x").plain == f"wid{escaped}x", escaped
    assert _value("/products/wid  ").plain == "/products/wid\\x20\\x20"
    assert _value("Wid\tget\t").plain == "Wid\\tget\\t"  # a tab looked like spaces, or nothing
    assert _value("A\n│ n99 │ Fake").plain == "A\\n│ n99 │ Fake"  # a newline split the row
    # an escape is never the text of one: a backslash is doubled, unless the service did
    assert _value("mallory ").plain != _value("mallory\\x20").plain
    assert _value("mallory\\x20").plain == "mallory\\\\x20"
    assert _value("/x\\\\y", escaped=True).plain == "/x\\\\y"
    # e and a combining acute looked like é; text in its composed form is shown as it is
    assert _value("e\u0301").plain == "e\\u0301" and _value("\u00e9").plain == "\u00e9"
    assert _value("नमस्ते").plain == "नमस्ते"
    # what composing replaces looked like what it is replaced with; a mark that composes
    # with nothing is shown (U+0958, not composed, and its vowel signs: a re-check trial)
    for lookalike, escaped in (("\u212bngstrom", "\\u212bngstrom"), ("a\u037eb", "a\\u037eb")):
        assert _value(lookalike).plain == escaped, escaped
    assert _value("\u0958\u093f\u0924\u093e\u092c").plain == "\\u0958\u093f\u0924\u093e\u092c"
    # an emoji's own joiners and presentation selector show as the emoji; elsewhere, not
    for emoji in ("👩\u200d💻", "❤\ufe0f", "👩🏽\u200d💻", "🏳\ufe0f\u200d🌈", "1\ufe0f\u20e3", "👍🏽"):
        assert _value(emoji).plain == emoji, emoji
    assert _value("a\u200db\ufe0f").plain == "a\\u200db\\ufe0f"
    assert _value("\u200d👩").plain == "\\u200d👩"
    assert _text("PaymentFailed  ").plain == "PaymentFailed  "  # a composed line's padding
    assert _text("a b").plain == "a b"
    assert _text("Zoe\u0308").plain == "Zoe\u0308"  # a combining mark shows on its letter
    # what shows as one same box, or nothing: private-use and unassigned characters
    assert _text("k\ue000 k\U000f0000 k\u0378").plain == "k\\ue000 k\\U000f0000 k\\u0378"
    # a mark first in a cell has no letter of its own: it drew on the cell's padding
    assert _value("\u0301abc").plain == "\\u0301abc" and _value("a\u0308bc").plain == "a\\u0308bc"


def test_audit_list_shows_an_action_and_its_resource_in_one_cell() -> None:
    """At 80 columns the route's template beside its path folded every word (``PlaceOrd`` /
    ``er via``): a newcomer trial. Text shows the method with the path itself when it is the
    route's, another action with its resource after ``on``; ``-o wide`` keeps both apart."""
    from sagactl.cli import _what

    order = "99909082-1234-4567-89ab-0123456789ab"
    assert _what("PUT /accounts/{customer_id}", "/accounts/alice") == "PUT /accounts/alice"
    cancel = _what("POST /orders/{order_id}/cancel", f"/orders/{order}/cancel")
    assert cancel == "POST /orders/99909082/cancel"
    # a resource that is the start of the route's path fills it: the order cancelled
    assert _what("POST /orders/{order_id}/cancel", f"/orders/{order}") == "POST /orders/99909082/cancel"
    # the path a call made, not the route's: the order placed
    assert _what("POST /orders", f"/orders/{order}") == "POST /orders on /orders/99909082"
    other = _what("PUT /accounts/{customer_id}", "/accounts/a/b")
    assert other == "PUT /accounts/{customer_id} on /accounts/a/b"
    assert _what("PlaceOrder via orders.commands", f"/orders/{order}") == (
        "PlaceOrder via orders.commands on /orders/99909082"
    )
    assert _what("POST /no such/path", "/no such/path") == "POST /no\\x20such/path"  # no route: its path
    # a 404 of a path that reads as another entry's (a re-check trial)
    fake = f"/orders on /orders/{order}"
    assert _what(f"POST {fake}", fake) == "POST /orders\\x20on\\x20/orders/99909082"
    assert _what("GET /health", "") == "GET /health"


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ('{"order_id": "a", "order_id": "b"}', 'value: {"order_id": "a", "order_id": "b"}'),
        ('{"total": 12345678901234567890.10}', 'value: {"total": 12345678901234567890.10}'),
        (
            '{"total": 1.5, "n": 12345678901234567890}',
            'value:\n{\n  "total": 1.5,\n  "n": 12345678901234567890\n}',
        ),
    ],
    ids=["a-name-twice", "a-number-rewritten", "shown-indented"],
)
def test_dlq_show_indents_a_body_only_where_that_shows_it_as_it_is(body: str, shown: str) -> None:
    """``{"id": "a", "id": "b"}`` was shown as ``{"id": "b"}``, and 12345678901234567890.10
    as 1.2345678901234567e+19 (an attack trial): such a body is shown as it came."""
    view = {"text": body, "base64": None, "size": len(body), "truncated": False}
    letter: dict[str, Any] = {
        **dict.fromkeys(("status", "reason", "event_type", "order_id", "created_at", "resolved_at")),
        "replay_attempts": 0,
        **{"source_topic": "orders.events", "source_partition": 0, "source_offset": 1},
        "key": None,
        "headers": [],
        "headers_total": 0,
        "value": view,
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        result = CliRunner().invoke(app, ["--payment-url", server.base, "dlq", "show", "payment", "1"])
    assert result.exit_code == 0, result.output
    assert shown in result.output, result.output


def test_dlq_show_tells_what_is_not_text_from_text_that_reads_so() -> None:
    """A null header and one of the text ``(null)``, bytes that are not UTF-8 and the text
    ``base64:/w==``, looked alike (an attack trial)."""
    view = {"base64": None, "size": 6, "truncated": False}
    letter: dict[str, Any] = {
        **dict.fromkeys(("status", "reason", "event_type", "order_id", "created_at", "resolved_at")),
        "replay_attempts": 0,
        **{"source_topic": "orders.events", "source_partition": 0, "source_offset": 1},
        "key": {**view, "text": None, "base64": "/w==", "size": 1},
        "headers": [
            {"key": "n", "value": None},
            {"key": "t", "value": {**view, "text": "(null)"}},
            {"key": "b", "value": {**view, "text": "base64:/w=="}},
        ],
        "headers_total": 3,
        "value": {**view, "text": "(null)"},  # a body, as the key's, not a tombstone
    }
    with JsonServer(json.dumps(letter).encode()) as server:
        result = CliRunner().invoke(app, ["--payment-url", server.base, "dlq", "show", "payment", "1"])
    assert result.exit_code == 0, result.output
    rows = [re.split(r"\s{2,}", line.strip("│ ")) for line in result.output.splitlines()]
    assert ["key", "base64:/w=="] in rows, result.output
    assert ["header n", "(null)"] in rows and ["header t", "\\x28null)"] in rows, result.output
    assert ["header b", "\\x62ase64:/w=="] in rows, result.output
    assert "value: \\x28null)" in result.output, result.output


def test_a_shortened_command_id_is_refused_with_what_to_give() -> None:
    """An order's id may be shortened (saga, cancel), a command's may not: its first 8
    characters got "not a command id (a UUID)", read as a bug (a newcomer trial)."""
    result = CliRunner().invoke(app, ["command", "ff24882d"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "give the whole UUID" in result.output and "only an order's id may be shortened" in result.output


@pytest.mark.parametrize("command", ["token", "publish", "kafka-acls"])
def test_a_command_that_calls_no_service_does_not_list_the_service_options(command: str) -> None:
    """'sagactl token --token' read as nonsense (a newcomer trial): the service URLs and
    the token are not in the help of a command that calls no service; a command that
    does lists them."""
    for name, listed in ((command, False), ("health", True)):
        result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert ("--order-url" in result.output) is listed and ("--token " in result.output) is listed, name


def test_place_wait_says_on_stderr_what_the_saga_waits_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """In an outage ``place --wait`` printed nothing for the whole of the order's deadline,
    then "CANCELLED (timeout)" (a newcomer trial): while it waits it says, once each time
    it changes, what the saga's explanation says it waits on."""
    import json

    from sagactl import cli
    from tests.jsonserver import JsonServer

    monkeypatch.setattr(cli._Waiting, "EVERY", 0.1)
    monkeypatch.setattr(cli._await_outcome, "__defaults__", (1.0,))  # the wait: 1 s, not 60
    order_id = "0b9c3c4e-8f3a-4f57-9d68-2f0f1e0b6a11"
    verdict = "in flight: waiting on the payment provider since 2026-12-07T13:00:00+00:00 (503)"
    body = {"order_id": order_id, "status": "PENDING", "explanation": {"verdict": verdict}}
    with JsonServer(json.dumps(body).encode()) as server:  # every path: this order, pending
        result = CliRunner().invoke(
            app, ["--order-url", server.base, "place", "alice", "widget=1", "--wait"], env={"COLUMNS": "200"}
        )
    assert result.exit_code == 1, result.output  # still PENDING when the wait ended
    said = [line for line in result.stderr.splitlines() if "waiting on" in line]
    assert said == ["order 0b9c3c4e waiting on the payment provider since 2026-12-07T13:00:00+00:00 (503)"]
    assert "still PENDING" in result.stderr
