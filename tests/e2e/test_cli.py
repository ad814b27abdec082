"""``sagactl`` answers "why was order X rejected, and was everything it owed done?" alone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from sagastack.client import SagaClient
from sagastack.system import PROVIDER, System
from tests.e2e.conftest import UniqueIds, sagactl, sagactl_env, sagactl_started, seed


def test_why_was_it_rejected_and_was_everything_owed_done(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"oar": ("9.00", 4)}, {"lea": "5.00"})
    order_id = client.place_order(customers["lea"], {products["oar"]: 1})
    client.wait_for_events(order_id, {"InventoryReleased"})

    shown = sagactl(system, "saga", order_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = shown.stdout
    assert "REJECTED" in out and "payment was declined (insufficient funds)" in out
    assert "✓ inventory_svc: give reserved or sold stock back" in out
    assert re.search(r"settled\s+yes", out)
    # the causation tree: the release hangs under the PaymentFailed that caused it
    lines = out.splitlines()
    failed = next(i for i, ln in enumerate(lines) if "PaymentFailed payment_svc" in ln)
    released = next(i for i, ln in enumerate(lines) if "InventoryReleased inventory_svc" in ln)
    assert released > failed
    assert lines[released].index("InventoryReleased") > lines[failed].index("PaymentFailed")
    assert "Δ" in lines[released] and "ms" in lines[released]
    # a compensation is marked in words too, not by colour alone (a pipe has none)
    assert "↩ InventoryReleased" in lines[released] and "↩" not in lines[failed]
    assert "each under its cause" in out and "↩ a compensation" in out

    listed = sagactl(system, "orders", "--status", "rejected", "--limit", "200", "-o", "wide")
    assert listed.returncode == 0 and order_id in listed.stdout

    stock = sagactl(system, "stock")
    assert products["oar"] in stock.stdout
    balances = sagactl(system, "balances")
    assert customers["lea"] in balances.stdout and "5.00" in balances.stdout


def test_tail_prints_events_as_they_are_recorded(system: System, client: SagaClient, uid: UniqueIds) -> None:
    tail = sagactl(system, "tail", "--from-start", "--count", "3")
    assert tail.returncode == 0, tail.stdout + tail.stderr
    assert len([ln for ln in tail.stdout.splitlines() if ln.strip()]) == 3


def test_tail_says_it_follows_new_events_and_place_where_to_follow(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Without --from-start, tail printed nothing until an event came (it looked hung);
    place over HTTP answered PENDING and said nothing of where the outcome would be."""
    products, customers = seed(client, uid, {"cup": ("1.00", 2)}, {"ida": "5.00"})
    tail = sagactl_started(system, "tail", "--count", "1")
    stop = threading.Timer(60, tail.kill)  # whatever happens, it is not waited for longer
    stop.start()
    try:
        assert tail.stderr is not None
        # the saga is placed once tail follows (it says so once its stream is open: a
        # fixed 3 s for its start was too short on a loaded machine, and it saw nothing)
        said = ""
        for line in tail.stderr:
            said += line
            if "following new events (--from-start shows the earlier ones)" in line:
                break
        else:
            raise AssertionError(f"tail ended without following: {said}")
        placed = sagactl(system, "place", customers["ida"], f"{products['cup']}=1")
        out, err = tail.communicate()
    finally:
        stop.cancel()
        tail.kill()
    assert tail.returncode == 0 and len(out.splitlines()) == 1, out + said + err
    order_id = placed.stdout.split()[1].rstrip(":")
    assert placed.stderr.strip() == f"follow it: sagactl saga {order_id[:8]}"


def test_another_services_url_given_for_a_service_is_refused_by_it_and_nothing_is_done(
    system: System,
) -> None:
    """The inventory service's URL given as the payment service's listed inventory's dead
    letters as payment's, showed inventory's audit head as payment's to keep, and would
    have replayed inventory's letter; the provider simulator's given as the order
    service's said its health was ready (a newcomer trial). The service (or the
    simulator) answers 421 to a call meant for another, and names itself."""
    wrong = ["--payment-url", system.url("inventory_svc")]
    said = (
        f"the URL given for the payment service, {system.url('inventory_svc')} (--payment-url or"
        " SAGACTL_PAYMENT_URL), is inventory_svc's: it did nothing with the call; give the payment service's"
    )
    for args in (["dlq", "list"], ["audit", "verify"], ["dlq", "replay", "payment", "1"]):
        result = sagactl(system, *wrong, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert " ".join(result.stderr.split()) == said, args
        assert result.stdout == "", args
    provider = ["--order-url", system.url(PROVIDER)]
    healthy = sagactl(system, *provider, "health", "-o", "json")
    assert healthy.returncode == 2, healthy.stdout
    order = json.loads(healthy.stdout)["order"]
    assert order["status"] == "misdirected" and "is payment_provider's" in order["error"], order
    # placed on Kafka, then followed at the wrong URL: it was placed, and a trial was told
    # "nothing was done"; now nothing is sent
    for waiting in ("--wait", "--no-wait"):  # --no-wait sent it (the next trial)
        placed = sagactl(system, *provider, "place", "nobody", "nothing=1", "--via", "kafka", waiting)
        assert placed.returncode == 2, (waiting, placed.stdout, placed.stderr)
        assert "is payment_provider's" in placed.stderr and "nothing was sent" in placed.stderr
        assert "sent PlaceOrder" not in placed.stdout + placed.stderr
    # every answer names its service
    assert system.http.get(f"{system.url('payment_svc')}/health/live").headers["server"] == "payment_svc"
    assert system.http.get(f"{system.url(PROVIDER)}/health/live").headers["server"] == PROVIDER


def test_a_refusal_every_service_gives_is_said_once(system: System) -> None:
    """A customer's token listing dead letters printed three 403 lines, one per service (a
    newcomer trial): the services are asked at once, and the first refusal is said."""
    customer = system.token("alice", roles=("customer",))
    for args in (["dlq", "list"], ["audit", "verify"]):
        result = sagactl(system, "--token", customer, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "403" in lines[0] and lines[0].startswith("the order service"), lines
        assert result.stdout == "", args


def test_a_reader_that_stops_reading_ends_it_as_sigpipe_would_not_as_a_refusal(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """``sagactl saga <id> | head -1`` exited 1, "a service refused", saying nothing (a
    newcomer trial): click's answer to a closed pipe. Now 141, as a shell counts a tool
    that SIGPIPE ended, and nothing said."""
    products, customers = seed(client, uid, {"reed": ("1.00", 5)}, {"una": "10.00"})
    order_id = client.place_order(customers["una"], {products["reed"]: 1})
    # the customer's orders: one, so no "there may be more" on stderr, whatever other
    # tests placed on the shared system (30 or more orders said so, and this failed)
    for args in (
        ["saga", order_id],
        ["saga", order_id, "-o", "json"],
        ["orders", "--customer", customers["una"]],
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagactl", *args],
            env=sagactl_env(system),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before a line is written
        said = proc.stderr.read()
        assert (proc.wait(timeout=60), said) == (141, ""), args


def test_unknown_order_is_a_clear_error(system: System) -> None:
    result = sagactl(system, "saga", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1 and "404" in result.stderr and result.stdout == ""


def test_a_minted_customer_token_sees_only_that_customers_orders(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"yew": ("2.00", 9)}, {"ida": "50.00", "jon": "50.00"})
    own = client.place_order(customers["ida"], {products["yew"]: 1})
    other = client.place_order(customers["jon"], {products["yew"]: 1})

    minted = sagactl(system, "token", "--subject", customers["ida"], "--role", "customer")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2  # a JWT: header.claims.signature

    mine = sagactl(system, "orders", "--limit", "1000", "-o", "json", token=token)
    assert mine.returncode == 0, mine.stderr
    assert {o["customer_id"] for o in json.loads(mine.stdout)} == {customers["ida"]}
    assert own in mine.stdout and other not in mine.stdout
    # an operator lists one customer's (an attack trial: the API took customer_id, sagactl did not)
    jons = sagactl(system, "orders", "--customer", customers["jon"], "-o", "json")
    assert jons.returncode == 0, jons.stderr
    assert [o["order_id"] for o in json.loads(jons.stdout)] == [other]
    # another customer's saga is as if it did not exist; dead letters are the operator's
    assert "404" in sagactl(system, "saga", other, token=token).stderr
    refused = sagactl(system, "balances", token=token)
    assert refused.returncode == 1 and "403" in refused.stderr and "operator" in refused.stderr
    # …and it says where an operator's token comes from (a newcomer trial: it did not)
    assert "an operator's token: `sagactl token` mints a development one" in refused.stderr, refused.stderr
    # …and how she reads her own, as the README's access table says she may (a newcomer
    # trial: no command did); another's is as if there were none
    assert "a customer reads its own: sagactl balances <its id>" in refused.stderr, refused.stderr
    hers = sagactl(system, "balances", customers["ida"], customers["ida"], "-o", "json", token=token)
    assert hers.returncode == 0, hers.stderr
    assert [a["customer_id"] for a in json.loads(hers.stdout)] == [customers["ida"]]
    theirs = sagactl(system, "balances", customers["jon"], token=token)
    assert theirs.returncode == 1 and "404" in theirs.stderr, theirs


def test_health_with_a_refused_token_still_shows_readiness_and_says_why(system: System) -> None:
    """An expired or garbage SAGA_TOKEN made every service's row ``unauthorized``, and the
    readiness of a public probe was not shown at all (a newcomer trial)."""
    result = sagactl(system, "health", "-o", "json", token="junk")
    assert result.returncode == 1, result.stdout + result.stderr
    shown = json.loads(result.stdout)
    for service in ("order", "inventory", "payment"):
        assert shown[service]["status"] == "ready", shown
        assert shown[service]["error"] == "token refused: the token is not a JWT", shown
        assert shown[service]["checks"]["database"]["ok"] is True
    assert "the token of SAGA_TOKEN was refused (readiness shown without it)" in result.stderr
    assert "`sagactl token` mints a development one" in result.stderr


def test_without_a_token_the_error_says_how_to_get_one(system: System) -> None:
    result = sagactl(system, "orders", token=None)
    assert result.returncode == 1 and result.stdout == ""
    assert "401" in result.stderr and "SAGA_TOKEN" in result.stderr and "sagactl token" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_placing_again_with_the_same_idempotency_key_says_it_is_the_order_placed_before(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """An attack trial: the same ``--idempotency-key`` and order again printed the order
    (APPROVED by then) as if placed anew; a key in another script than ASCII was a
    traceback (httpx sends a ``str`` header as ASCII; the API reads a key as UTF-8)."""
    products, customers = seed(client, uid, {"awl": ("1.00", 5)}, {"ned": "20.00"})
    key = f"ключ-🔑-{uid('key')}"
    args = ("place", customers["ned"], f"{products['awl']}=1", "--idempotency-key", key)
    first = sagactl(system, *args)
    again = sagactl(system, *args)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    placed = json.loads(sagactl(system, "orders", "--customer", customers["ned"], "-o", "json").stdout)
    assert len(placed) == 1, placed
    order_id = placed[0]["order_id"]
    assert order_id in first.stdout and order_id in again.stdout, first.stdout + again.stdout
    assert "placed before with Idempotency-Key" not in first.stderr
    assert f"placed before with Idempotency-Key {key}" in again.stderr, again.stderr
    # a finished order's key again: the order itself, its reason too (a newcomer trial got
    # "REJECTED" alone, and -o json its id and status only)
    poor = seed(client, uid, {}, {"pat": "0.10"})[1]["pat"]
    args = ("place", poor, f"{products['awl']}=1", "--idempotency-key", uid("key"), "--wait")
    assert "REJECTED (insufficient_funds)" in sagactl(system, *args).stdout
    for shown in (sagactl(system, *args).stdout, sagactl(system, *args[:-1]).stdout):
        assert "REJECTED (insufficient_funds)" in shown, shown
    said = json.loads(sagactl(system, *args, "-o", "json").stdout)
    assert (said["status"], said["reason"], said["customer_id"]) == ("REJECTED", "insufficient_funds", poor)


def test_the_readmes_try_it_by_hand_works_as_written_on_ports_of_its_own(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """The README's "Try it by hand" lines, run as a newcomer pastes them once the run's
    ``export …`` is done (this system's ports are not make run's): its curls hard-coded
    make run's ports (a newcomer trial). ``make run`` and ``make invariants`` are this
    test's fixture and another test's; the product and customer get fresh ids."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("### Try it by hand\n\n```bash\n", 1)[1].split("```", 1)[0]
    said = [ln for ln in block.splitlines() if not ln.lstrip().startswith("#")]
    lines = [ln for ln in said if not ln.startswith("make ")]
    assert lines[0].startswith("ORDERS=${SAGACTL_ORDER_URL:-"), block  # the make run lines are gone
    widget, alice = uid("widget"), uid("alice")
    script = "\n".join(lines).replace("widget", widget).replace("alice", alice)
    env = {k: v for k, v in sagactl_env(system).items() if k != "SAGA_TOKEN"}
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script + '\necho "order=$ORDER"'],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    order_id = ran.stdout.rsplit("order=", 1)[1].strip()
    assert f'"order_id":"{order_id}"' in ran.stdout.replace(" ", ""), ran.stdout  # the saga as JSON
    assert "Traceback" not in ran.stderr and "Connection refused" not in ran.stderr, ran.stderr
    assert "% Total" not in ran.stderr, ran.stderr  # curl's progress meter, when not a terminal
    client.wait_for_events(order_id, {"OrderCancelled"})
    deadline = time.monotonic() + 30  # the compensations follow the cancellation
    while (client.product(widget)["available"], Decimal(client.account(alice)["balance"])) != (5, 100):
        assert time.monotonic() < deadline, (client.product(widget), client.account(alice))
        time.sleep(0.2)  # restocked, and refunded (or never charged)


def test_place_wait_says_when_an_order_ended_with_something_still_owed(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """An order that ended is not a saga that settled: with payment stopped, the deadline
    cancels the order while payment still owes its answer (a void, or a refund), and
    ``place --wait`` says so on stderr after its outcome. It printed the outcome alone (a
    newcomer trial); an order whose compensations follow at once says nothing more."""
    products, customers = seed(client, uid, {"bell": ("2.00", 5)}, {"rae": "10.00"})
    system.stop_service("payment_svc")
    try:
        args = ("place", customers["rae"], f"{products['bell']}=1", "--deadline", "1", "--wait")
        placed = sagactl(system, *args)
    finally:
        system.start_service("payment_svc")
    assert placed.returncode == 0, placed.stderr
    assert "CANCELLED (timeout)" in placed.stdout
    assert "ended, not settled yet: still owed: payment_svc to keep no charge" in placed.stderr
    assert "follow it: sagactl saga" in placed.stderr
    settled = sagactl(system, "place", customers["rae"], f"{products['bell']}=1", "--wait")
    assert "APPROVED" in settled.stdout and "not settled" not in settled.stderr, settled.stderr


def test_an_operator_seeds_a_product_and_an_account_and_places_an_order_against_them(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Stock and accounts were set with curl only (a newcomer trial: no command did):
    ``set-product`` and ``set-balance`` do it, a product's price and name kept when not
    given, and the saga runs against what they set."""
    product, customer = uid("elm"), uid("kim")
    new = sagactl(system, "set-product", product, "--stock", "3")
    assert (new.returncode, new.stdout) == (2, ""), new
    assert f"there is no product {product}: a new one needs --price (nothing was changed)" in new.stderr

    made = sagactl(system, "set-product", product, "--stock", "3", "--price", "4.50", "-o", "json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {
        "product_id": product,
        "name": product,
        "price": "4.50",
        "available": 3,
        "reserved": 0,
        "sold": 0,
    }
    named = sagactl(system, "set-product", product, "--stock", "5", "--name", "Elm table")
    assert named.returncode == 0, named.stderr
    cells = r"[\s│]+"  # between a table's cells
    assert re.search(cells.join([product, "Elm table", r"4\.50", "5", "0", "0"]), named.stdout), named.stdout
    funded = sagactl(system, "set-balance", customer, "10.00")
    assert funded.returncode == 0, funded.stderr
    assert re.search(cells.join([customer, r"10\.00"]), funded.stdout), funded.stdout

    order_id = client.place_order(customer, {product: 2})
    client.wait_for_events(order_id, {"OrderApproved"})
    assert Decimal(client.account(customer)["balance"]) == Decimal("1.00")
    restocked = sagactl(system, "set-product", product, "--stock", "7", "-o", "json")
    assert restocked.returncode == 0, restocked.stderr
    shown = json.loads(restocked.stdout)
    assert (shown["name"], shown["price"], shown["available"], shown["sold"]) == ("Elm table", "4.50", 7, 2)

    # a wrong value is the service's refusal, said; a customer may not set either
    bad = sagactl(system, "set-balance", customer, "ten")
    assert bad.returncode == 1 and "422" in bad.stderr and "balance" in bad.stderr, bad
    minted = sagactl(system, "token", "--subject", customer, "--role", "customer").stdout.strip()
    refused = sagactl(system, "set-balance", customer, "1000.00", token=minted)
    assert refused.returncode == 1 and "403" in refused.stderr, refused
    assert Decimal(client.account(customer)["balance"]) == Decimal("1.00")
