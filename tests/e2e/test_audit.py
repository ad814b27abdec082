"""The audit trail (saga_kit.audit): every state-changing call and every compensation is an
entry — who, what, when, how it ended — and the hash chain shows any entry altered or
removed, even by someone who can switch the append-only trigger off."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from typing import Any

import httpx
import psycopg

from sagastack.client import SagaClient
from sagastack.system import System
from tests.e2e.conftest import UniqueIds, sagactl, seed


def entries(system: System, service: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = system.http.get(
            f"{system.url(service)}/audit", params={"after": found[-1]["seq"] if found else 0, "limit": 5000}
        ).json()
        found += [{**e, **json.loads(e["entry"])} for e in page]
        if len(page) < 5000:
            return found


def test_calls_and_compensations_are_recorded_with_who_and_how_they_ended(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    products, customers = seed(client, uid, {"elm": ("3.00", 5)}, {"kim": "50.00"})
    kim = system.client(customers["kim"])
    order_id = kim.place_order(customers["kim"], {products["elm"]: 1})
    kim.wait_for_events(order_id, {"PaymentCompleted"})
    # an anonymous attempt is recorded too, refused
    assert httpx.post(f"{system.url('order_svc')}/orders/{order_id}/cancel").status_code == 401
    kim.cancel(order_id)
    kim.wait_for_events(order_id, {"InventoryReleased", "PaymentRefunded"})
    kim.close()

    at_order = [e for e in entries(system, "order_svc") if order_id in e["resource"]]
    (placed,) = [e for e in at_order if e["action"] == "POST /orders"]  # once: the desk wrote it
    assert (placed["actor"], placed["role"], placed["outcome"]) == (customers["kim"], "customer", "202")
    assert placed["resource"] == f"/orders/{order_id}" and placed["request_id"]
    cancels = [e for e in at_order if e["action"] == "POST /orders/{order_id}/cancel"]
    assert [(e["actor"], e["outcome"]) for e in cancels] == [("anonymous", "401"), (customers["kim"], "202")]
    (compensated,) = [e for e in at_order if e["action"] == "compensate OrderCancelled"]
    assert compensated["seq"] > cancels[-1]["seq"]  # after the request that caused it
    # in the saga's trace; caused by a call, not an event: the call's entry is just before it
    assert compensated["request_id"] == placed["request_id"] != cancels[-1]["request_id"]
    assert compensated["cause"] is None and compensated["seq"] == cancels[-1]["seq"] + 1

    released = [e for e in entries(system, "inventory_svc") if e["resource"] == f"/orders/{order_id}"]
    assert [e["action"] for e in released] == ["compensate InventoryReleased"]
    assert released[0]["actor"] == "service:inventory_svc" and released[0]["cause"]
    refunded = [e for e in entries(system, "payment_svc") if e["resource"] == f"/orders/{order_id}"]
    assert "compensate PaymentRefunded" in [e["action"] for e in refunded]
    # a customer trying an operator's call is refused, and recorded under her name
    refused = httpx.put(
        f"{system.url('inventory_svc')}/products/{products['elm']}",
        json={"name": "free", "price": "0.00", "stock": 1},
        headers=system.auth(customers["kim"], roles=("customer",)),
    )
    assert refused.status_code == 403, refused.text
    # (its product's: another test's 403s on the same system are theirs)
    tried = [
        e
        for e in entries(system, "inventory_svc")
        if e["outcome"] == "403" and e["resource"] == f"/products/{products['elm']}"
    ]
    assert [(e["actor"], e["role"], e["action"]) for e in tried] == [
        (customers["kim"], "customer", "PUT /products/{product_id}")
    ]
    # the operator's seeding: PUTs with their outcome
    assert any(
        e["action"] == "PUT /products/{product_id}" and e["actor"] == "operator" and e["outcome"] == "200"
        for e in entries(system, "inventory_svc")
    )

    verified = sagactl(system, "audit", "verify", "-o", "json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    verdict = json.loads(verified.stdout)
    assert (verdict["unreachable"], verdict["unavailable"]) == ({}, {})
    chains = verdict["chains"]
    assert set(chains) == {"order", "inventory", "payment"}
    assert all(c["problems"] == [] and c["entries"] > 0 for c in chains.values())


def test_sagactl_lists_the_newest_entries_and_pages_back(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    """Reading who did what took curl and GET /audit (a newcomer trial): ``sagactl audit
    list`` shows the newest entries of every service, newest first, and pages back."""
    products, customers = seed(
        client, uid, {n: ("2.00", 5) for n in ("oak", "elm", "ash", "fir")}, {"max": "20.00"}
    )
    order_id = client.place_order(customers["max"], {products["oak"]: 1})
    listed = sagactl(system, "audit", "list", "--limit", "1000", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)["entries"]
    assert [e["at"] for e in shown] == sorted((e["at"] for e in shown), reverse=True)
    assert {e["service"] for e in shown} == {"order", "inventory", "payment"}
    (placed,) = [e for e in shown if e["resource"] == f"/orders/{order_id}" and e["action"] == "POST /orders"]
    assert (placed["service"], placed["actor"], placed["outcome"]) == ("order", "operator", "202")
    # a page of 2 of inventory's, then the page before it: the trail's newest four, in order
    newest = [e["seq"] for e in entries(system, "inventory_svc")][-4:]
    first = sagactl(system, "audit", "list", "--service", "inventory", "--limit", "2", "-o", "wide")
    assert first.returncode == 0, first.stderr
    hint = re.search(r"the next: --service inventory --before (\d+);", first.stderr)
    assert hint and int(hint.group(1)) == newest[2], first.stderr
    assert "POST /orders" not in first.stdout and "role" in first.stdout
    page = ["audit", "list", "--service", "inventory", "--limit", "2"]
    back = sagactl(system, *page, "--before", hint.group(1))
    assert back.returncode == 0, back.stderr
    assert (f"before seq {hint.group(1)}" in back.stderr) == (newest[0] > 1)  # none is before seq 1
    pages = [
        json.loads(sagactl(system, *page, *more, "-o", "json").stdout)["entries"]
        for more in ([], ["--before", hint.group(1)])
    ]
    assert [e["seq"] for p in pages for e in p] == newest[::-1], pages
    # what anyone may send is shown cut, its separators escaped; a customer who calls
    # herself "operator" is shown a customer (an attack trial)
    sent = httpx.post(f"{system.url('order_svc')}/\u2028{'B' * 3000}")
    assert sent.status_code == 404
    pretender = {"Authorization": f"Bearer {system.token('operator', roles=('customer',))}"}
    cancel = httpx.post(f"{system.url('order_svc')}/orders/{order_id}/cancel", headers=pretender)
    assert cancel.status_code == 404
    latest = sagactl(system, "audit", "list", "--service", "order", "--limit", "2", columns=80)
    assert latest.returncode == 0, latest.stderr
    assert len(latest.stdout.splitlines()) < 20, latest.stdout
    latest = sagactl(system, "audit", "list", "--service", "order", "--limit", "2")  # 250 columns
    assert "/\\u2028BBB" in latest.stdout and "\u2028" not in latest.stdout, latest.stdout
    rows = [ln for ln in latest.stdout.splitlines() if "operator" in ln]
    assert rows and all("customer" in ln for ln in rows), latest.stdout
    # a customer may not read it
    refused = sagactl(system, "audit", "list", token=system.token("ann", roles=("customer",)))
    assert refused.returncode == 1 and "403" in refused.stderr and refused.stdout == ""


def test_an_altered_or_removed_entry_breaks_the_chain(
    system: System, client: SagaClient, uid: UniqueIds
) -> None:
    # two products: the first one's entry is then not the chain's last (removing the last
    # shows only against a head hash kept elsewhere: the module doc of saga_kit.audit)
    products, customers = seed(client, uid, {"ash": ("1.00", 5), "fir": ("1.00", 5)}, {"lou": "9.00"})
    client.place_order(customers["lou"], {products["ash"]: 1})
    client.place_order(customers["lou"], {products["ash"]: 1})
    url = system.database_urls["inventory_svc"]
    with psycopg.connect(url, autocommit=True) as conn:
        # append-only: the table refuses a change
        try:
            conn.execute("UPDATE audit_log SET entry = entry WHERE seq = (SELECT max(seq) FROM audit_log)")
            raise AssertionError("audit_log accepted an UPDATE")
        except psycopg.errors.RaiseException as exc:
            assert "append-only" in str(exc)
        try:  # a row trigger does not see TRUNCATE: it emptied the chain, and a new one began
            conn.execute("TRUNCATE audit_log")
            raise AssertionError("audit_log accepted a TRUNCATE")
        except psycopg.errors.RaiseException as exc:
            assert "append-only" in str(exc)
        # the owner can switch the trigger off; the chain still tells
        seq, entry, prev, digest = conn.execute(
            "SELECT seq, entry, prev_hash, hash FROM audit_log WHERE entry LIKE %s ORDER BY seq LIMIT 1",
            (f"%{products['ash']}%",),
        ).fetchone()  # type: ignore[misc]
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        try:
            conn.execute(
                "UPDATE audit_log SET entry = replace(entry, '\"operator\"', '\"nobody\"') WHERE seq = %s",
                (seq,),
            )
            altered = sagactl(system, "audit", "verify", "--service", "inventory")
            assert altered.returncode == 1
            assert f"entry {seq} does not match its hash (it was altered)" in " ".join(altered.stdout.split())

            conn.execute("DELETE FROM audit_log WHERE seq = %s", (seq,))
            removed = sagactl(system, "audit", "verify", "--service", "inventory", "-o", "json")
            assert removed.returncode == 1
            (problem,) = json.loads(removed.stdout)["chains"]["inventory"]["problems"]
            assert "does not follow the entry before it" in problem

            # put it back as it was: the chain is whole again
            conn.execute(
                "INSERT INTO audit_log (seq, entry, prev_hash, hash) VALUES (%s, %s, %s, %s)",
                (seq, entry, prev, digest),
            )

            # the last entry removed: the chain alone cannot tell, a head kept before can
            kept = json.loads(sagactl(system, "audit", "verify", "-s", "inventory", "-o", "json").stdout)
            head = kept["chains"]["inventory"]["head"]
            last = conn.execute(
                "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log) RETURNING *"
            ).fetchone()
            assert last is not None
            assert sagactl(system, "audit", "verify", "-s", "inventory").returncode == 0
            against = sagactl(system, "audit", "verify", "-s", "inventory", "--kept", f"inventory={head}")
            assert against.returncode == 1, against.stdout
            said = "".join(against.stdout.split())  # the table folds the hash: read it unbroken
            assert f"theheadhashkeptbefore({head})isnotinthechain" in said
            conn.execute("INSERT INTO audit_log (seq, entry, prev_hash, hash) VALUES (%s, %s, %s, %s)", last)
        finally:
            conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    restored = sagactl(system, "audit", "verify", "--service", "inventory")
    assert restored.returncode == 0, restored.stdout


def test_a_path_anyone_may_send_is_kept_bounded_and_escaped(system: System) -> None:
    """An attack trial: an anonymous POST to a path of 64,000 characters was an entry of
    128,000 (the path twice, as action and resource) that no one may ever delete, and a
    NUL or a U+202E in a path went into the entry as it came. A path with a control
    character (the NUL) is now refused before anything reads it, as the Host allow-list's
    refusals are, and no entry is made of it."""
    marker = uuid.uuid4().hex
    for path in (f"/{marker}{'Q' * 20_000}", f"/{marker}x%E2%80%AEgnp.exe"):
        assert httpx.post(f"{system.url('payment_svc')}{path}").status_code in (404, 405)
    refused = httpx.post(f"{system.url('payment_svc')}/{marker}x%E2%80%AEgnp.exe%00")
    assert (refused.status_code, refused.json()["reason"]) == (400, "invalid_path"), refused.text
    mine = [e for e in entries(system, "payment_svc") if marker in e["resource"]]
    assert len(mine) == 2, mine
    long, odd = mine
    assert len(long["resource"]) == 1024 and long["resource"].endswith("…")
    assert long["action"] == f"POST {long['resource']}" and long["actor"] == "anonymous"
    assert odd["resource"] == f"/{marker}x\\u202egnp.exe"


def test_a_call_refused_before_its_route_names_its_caller_when_the_token_is_valid(
    system: System, uid: UniqueIds
) -> None:
    """An attack trial: with a valid token, a POST to no route (404), a method the route
    lacks (405) and a body that broke off (400) were entries of ``anonymous``, where the
    design says ``anonymous`` only without a valid token (the route's authentication had
    not run). A token that is not valid stays anonymous."""
    base = system.url("order_svc")
    customer = uid("kit")
    headers = system.auth(customer, roles=("customer",))
    path = f"/nowhere-{uuid.uuid4().hex[:8]}"
    assert httpx.post(f"{base}{path}", headers=headers).status_code == 404
    assert httpx.post(f"{base}{path}", headers={"Authorization": "Bearer not.a.token"}).status_code == 404
    assert httpx.delete(f"{base}/orders", headers=headers, params={"x": customer}).status_code == 405
    # a chunked body that stops after its first chunk: the client goes away
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /orders HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\nAuthorization: {headers['Authorization']}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'9\r\n{"custome\r\n')
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in entries(system, "order_svc") if e["resource"] in (path, "/orders")]
        mine = [(e["action"], e["outcome"], e["actor"]) for e in found]
        if ("POST /orders", "400", customer) in mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (f"POST {path}", "404", customer) in mine, mine
    assert (f"POST {path}", "404", "anonymous") in mine, mine  # the token not valid
    assert ("POST /orders", "400", customer) in mine, mine
    deleted = [e for e in found if e["action"].startswith("DELETE") and e["outcome"] == "405"]
    assert customer in [e["actor"] for e in deleted], deleted


def test_a_call_through_the_dashboards_api_is_traced_and_audited_with_its_trace(system: System) -> None:
    """The dashboard's replay of a dead letter had no trace (every /dashboard path was left
    untraced, as its pages are): its audit entry named no request (an operator trial)."""
    answer = system.http.post(
        f"{system.url('order_svc')}/dashboard/api/dead-letters/inventory_svc/{2**62}/replay",
        headers=system.auth("operator"),
    )
    assert answer.status_code == 404, answer.text
    trace_id = answer.headers["X-Trace-Id"]
    (entry,) = [
        e
        for e in entries(system, "order_svc")
        if e["action"] == "POST /dashboard/api/dead-letters/{service}/{letter_id}/replay"
        and e["request_id"] == trace_id
    ]
    assert (entry["actor"], entry["outcome"]) == ("operator", "404")
    page = system.http.get(f"{system.url('order_svc')}/dashboard")  # a page stays untraced
    assert page.status_code == 200 and "X-Trace-Id" not in page.headers
