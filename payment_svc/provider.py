"""The payment provider, seen from the payment service: an external card processor over
HTTP (``payment_provider/`` simulates one; production points ``PAYMENT_PROVIDER_URL`` at a
real one). The contract is the simulator's README section: amounts are decimal strings,
``POST /v1/charges`` and ``POST /v1/refunds`` take an ``Idempotency-Key`` and answer the
same result to the same key however often it is sent.

Every call here has a timeout (``PAYMENT_PROVIDER_TIMEOUT_SECONDS``) and goes through one
circuit breaker (the ``circuitbreaker`` library): after
``PAYMENT_PROVIDER_BREAKER_FAILURES`` failures in a row it opens and calls fail fast with
``Unavailable`` for ``PAYMENT_PROVIDER_BREAKER_RECOVERY_SECONDS``; then it half-opens and
lets calls probe: a success closes it, a failure opens it again.

Each call answers one of:

* ``Charged`` / ``Refunded`` — done (perhaps earlier: a replay of the same key; a refund
  also when the charge was refunded under another key, e.g. by hand at the provider);
* ``Declined`` — a business answer (402): the card was declined, with the provider's code;
* ``Unavailable`` — nothing happened, or the outcome is unknown: call again later with
  the same key. ``nothing_done`` tells the two apart. It is true only when the request
  cannot have done anything: the breaker was open (no request was sent), the connection
  was never made (connection refused, TLS handshake failed), or the provider answered
  503 or 429, which its contract defines as "nothing done" (the simulator's README
  section; so do card processors' APIs for a rate limit or an outage). A timeout, a reset
  connection, a 500, 502 or 504 leave the outcome unknown: the charge may have happened;
* ``Refused`` — the provider refused the request itself (another 4xx): a bug or a
  misconfiguration that retrying will not cure quickly; it is retried slowly and logged.
  Refused before anything was done, its ``nothing_done`` is true — every 4xx but 409
  (the provider's contract, as card processors' APIs say of a request that failed
  validation or authentication): a cancelled order whose calls were all refused so is
  voided, not left in doubt for ever. A 409 says another request under the same key
  exists: that one may have charged. Any other answer that is neither a success nor a
  failure (a 202, a 3xx: redirects are never followed) is ``Refused`` too, and promises
  nothing: its ``nothing_done`` is false.

Only ``Unavailable`` counts against the breaker: a decline is the provider working.

The HTTP client is aiohttp's, one session (a keep-alive connection pool) per process:
measured on this project's 2-core machine against the same local server, a call costs
about 0.15 ms of client CPU through aiohttp and 1.3 to 1.6 ms through httpx, and the payment
service makes one call per saga.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar

import aiohttp
from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker

from events.payment import DeclineReason
from events.values import printable
from saga_kit import tracing

log = logging.getLogger(__name__)

_DECLINE_CODES: frozenset[str] = frozenset({"insufficient_funds", "unknown_account"})


@dataclass(frozen=True)
class Charged:
    """Charged now, or earlier under the same key (a replay answers the same charge)."""

    charge_id: str


@dataclass(frozen=True)
class Refunded:
    """Refunded now, or earlier under the same key; ``refund_id`` None: refunded earlier
    under another key (409 ``charge_already_refunded``: a support agent refunded it by hand
    at the provider), so the money is back all the same."""

    refund_id: str | None


@dataclass(frozen=True)
class Declined:
    reason: DeclineReason


@dataclass(frozen=True)
class Unavailable:
    """No answer that settles the call: try again later with the same idempotency key.
    ``nothing_done``: the provider did nothing (or was never asked), so a cancellation may
    void the payment; false: it may have charged (a timeout, a lost answer, a 5xx but 503)."""

    reason: str
    nothing_done: bool = False


@dataclass(frozen=True)
class Refused:
    """A 4xx other than a decline: the request itself is wrong (e.g. a refund of an unknown
    charge, an idempotency key reused with another body); also any other answer that is
    neither a success nor a failure (a 202, a 3xx, never followed), retried as slowly."""

    status: int
    reason: str

    @property
    def nothing_done(self) -> bool:
        """True for a 4xx unless it is one that may follow a charge made under the key
        (``MAY_HAVE_DONE_REFUSALS``): counted like ``Unavailable(nothing_done=True)`` by
        the rule a cancellation voids by. Any other status answered here (a 202, a 3xx not
        followed) promises nothing: the charge may have been made."""
        return 400 <= self.status < 500 and self.status not in MAY_HAVE_DONE_REFUSALS


ChargeResult = Charged | Declined | Unavailable | Refused
SettledT = TypeVar("SettledT", Charged, Declined, Refunded)
RefundResult = Refunded | Unavailable | Refused

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Answer:
    """The provider's HTTP answer: its status and body (read whole; answers are small)."""

    status_code: int
    content: bytes
    #: its ``Retry-After`` header, if it sent one
    retry_after: str | None = None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; raises ``ValueError`` if it is not JSON, also when it nests
        deeper than the parser goes (its ``RecursionError`` broke the worker's whole round:
        every answer of it dropped, as a garbled body's did; a review)."""
        try:
            return json.loads(self.content)
        except RecursionError:
            raise ValueError("the body nests too deep to be read") from None


class Unreachable(Exception):
    """``PaymentProvider.request`` got no answer: connection refused or reset, or no
    answer within the timeout. Its message is the error's kind only (callers may show it);
    the details are logged. ``sent``: the request may have reached the provider (false
    only when no connection was made, as ``_send`` tells them apart)."""

    def __init__(self, kind: str, *, sent: bool) -> None:
        super().__init__(kind)
        self.sent = sent


class _Failed(Exception):
    """A call the breaker counts as failed (the provider did not do its job);
    ``nothing_done`` as in ``Unavailable``; ``outcome``, the call's label in
    ``saga_payment_provider_calls_total``: the answer's HTTP status (``"503"``, ``"429"``,
    ``"500"``, …), ``"unreachable"`` (no connection: nothing sent), ``"timeout"`` or
    ``"broken"`` (no answer, or a connection that broke off: it may have been done)."""

    def __init__(self, reason: str, *, nothing_done: bool, outcome: str) -> None:
        super().__init__(printable(reason, 1000))  # stored as the payment's last_error
        self.nothing_done = nothing_done
        self.outcome = outcome


class _Breaker(CircuitBreaker):  # type: ignore[misc]
    """``circuitbreaker``'s breaker, but a call ended by an exception it does not count —
    a cancellation, a bug of ours — leaves its state as it was. The library counts every
    such call a success and closes the breaker: a half-open probe cancelled at shutdown, or
    one that raised on our side, would have closed it without the provider answering."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> bool:
        if exc_type is not None and not self.is_failure(exc_type, exc_value):
            return False  # said nothing of the provider: raise it, count nothing
        return bool(super().__exit__(exc_type, exc_value, traceback))


def cannot_have_charged(calls: int, nothing_done_calls: int) -> bool:
    """The rule a cancellation voids by (c6): the provider cannot have charged while every
    call claimed so far (``calls``) was answered "nothing done" (``Unavailable`` or
    ``Refused`` with ``nothing_done``). A call
    in flight, lost in a crash, or answered otherwise keeps the two apart: it may have."""
    return calls == nothing_done_calls


#: The most bytes of an answer's body read (4 MiB): a charge's or refund's answer is under
#: a kilobyte, the account list ``GET /v1/accounts`` about 60 bytes an account. A body
#: over it is not read on: the call broke off (``aiohttp.ClientPayloadError``). Read whole,
#: bounded only by the timeout, a provider streaming 300 MB took the service from 138 to
#: 755 MB resident with two calls (an attack trial).
MAX_ANSWER_BYTES = 4 * 1024 * 1024

#: answers that the provider's contract defines as "nothing done": retry with the same key
NOTHING_DONE_STATUSES: frozenset[int] = frozenset({429, 503})

#: 4xx refusals that do not promise "nothing done": 409, another request under the same
#: key (another body, or one still in progress) — it may have charged
MAY_HAVE_DONE_REFUSALS: frozenset[int] = frozenset({409})


def charge_key(order_id: object) -> str:
    """The idempotency key of an order's charge: one order, one charge, whoever asks and
    however often (retries, restarts, a second instance)."""
    return f"charge:{order_id}"


def refund_key(order_id: object) -> str:
    """The idempotency key of an order's refund."""
    return f"refund:{order_id}"


class PaymentProvider:
    """The HTTP client of the provider with its timeout and circuit breaker; one per
    process (the breaker's memory is the process's view of the provider)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        breaker_failures: int,
        breaker_recovery: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        #: made on first use: an aiohttp session belongs to the running event loop
        self._session: aiohttp.ClientSession | None = None
        self.breaker = _Breaker(
            failure_threshold=breaker_failures,
            recovery_timeout=breaker_recovery,
            expected_exception=_Failed,
            name="payment provider",
        )
        #: (operation, outcome) → calls, for /metrics
        self.calls: Counter[tuple[str, str]] = Counter()
        #: when the breaker last opened (epoch seconds), None while closed
        self.opened_at: float | None = None
        self.last_failure: str | None = None
        #: (since when, epoch seconds; the last refusal) while the provider's latest
        #: answers to charges and refunds are refusals (4xx but a decline); None once one
        #: is settled. Refusals do not count against the breaker (the provider works), so
        #: without this a provider refusing every call — a wrong path, a revoked API key —
        #: left readiness saying all was well (an attack trial)
        self.refusing: tuple[float, str] | None = None

    @property
    def state(self) -> BreakerState:
        state = self.breaker.state
        if state == STATE_OPEN:
            return "open"
        if state == STATE_HALF_OPEN:
            return "half_open"
        assert state == STATE_CLOSED
        return "closed"

    def retry_after(self) -> float:
        """Seconds until the open breaker lets a probe through (0 unless open)."""
        return max(0.0, float(self.breaker.open_remaining)) if self.state == "open" else 0.0

    async def charge(self, key: str, account_id: str, amount: Decimal, reference: str) -> ChargeResult:
        """``POST /v1/charges`` with ``Idempotency-Key: key``."""
        body = {"account_id": account_id, "amount": f"{amount:.2f}", "reference": reference}
        answer = await self._call("charge", "POST", "/v1/charges", key, body)
        if not isinstance(answer, Answer):
            return answer
        if answer.status_code in (200, 201):
            charge_id = _member(answer, "charge_id")
            return (
                self._settled(Charged(charge_id)) if charge_id is not None else _garbled(answer, "charge_id")
            )
        if answer.status_code == 402:  # declined, whatever the body says of why
            code = _member(answer, "decline_code")
            return self._settled(Declined(code if code in _DECLINE_CODES else "card_declined"))  # type: ignore[arg-type]
        return self._refused(answer)

    async def refund(self, key: str, charge: str) -> RefundResult:
        """``POST /v1/refunds`` of the whole charge whose idempotency key is ``charge``."""
        answer = await self._call("refund", "POST", "/v1/refunds", key, {"charge_key": charge})
        if not isinstance(answer, Answer):
            return answer
        if answer.status_code in (200, 201):
            refund_id = _member(answer, "refund_id")
            return (
                self._settled(Refunded(refund_id)) if refund_id is not None else _garbled(answer, "refund_id")
            )
        if answer.status_code == 409 and _member(answer, "error") == "charge_already_refunded":
            # refunded under another key: retried, it was refused for ever and the saga
            # never settled, though the customer had the money back
            return self._settled(Refunded(None))
        return self._refused(answer)

    def _settled(self, result: SettledT) -> SettledT:
        self.refusing = None
        return result

    def _refused(self, answer: Answer) -> Refused:
        refused = Refused(answer.status_code, _error(answer))
        said = f"{refused.status} {refused.reason}"
        self.refusing = (self.refusing[0] if self.refusing else time.time(), said)
        return refused

    async def probe(self) -> None:
        """A harmless call through the breaker — the lookup of a charge that does not exist
        (404 is an answer) — so that a half-open breaker closes once the provider is back
        even when no payment is waiting to be the probe."""
        await self._call("probe", "GET", f"/v1/charges/probe:{uuid.uuid4()}", None, None)

    async def request(self, method: str, path: str, json: Any = None) -> Answer:
        """A plain call (accounts), outside the breaker, with the timeout; raises
        ``Unreachable`` when no answer came."""
        try:
            return await self._exchange(method, path, json, {})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "payment provider: %s %s got no answer (%s: %s)", method, path, type(exc).__name__, exc
            )
            sent = not isinstance(exc, aiohttp.ClientConnectorError)  # connected: it left
            raise Unreachable(type(exc).__name__, sent=sent) from None

    async def _exchange(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Answer:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        # never follow a redirect: a payment API does not redirect a charge, and what its
        # target answers (a 404: "nothing done") is not the charge's outcome (an attack
        # trial: followed, a charge made was voided); the 3xx is the answer, and promises nothing
        url = self.base_url + path
        async with self._session.request(method, url, json=body, headers=headers, allow_redirects=False) as r:
            return Answer(r.status, await _body(r), r.headers.get("Retry-After"))

    async def _call(
        self, operation: str, method: str, path: str, key: str | None, body: dict[str, Any] | None
    ) -> Answer | Unavailable:
        if self.breaker.opened:
            self.calls[(operation, "breaker_open")] += 1
            return Unavailable(f"circuit breaker open: {self.last_failure}", nothing_done=True)
        try:
            answer: Answer = await self.breaker.call_async(self._send, method, path, key, body)
        except _Failed as exc:
            self.last_failure = str(exc)
            self.calls[(operation, exc.outcome)] += 1
            # its key names the order: grep <order id> finds the retries (a newcomer trial)
            keyed = f" (idempotency key {key})" if key else ""
            log.warning("payment provider: %s%s failed, to be retried: %s", operation, keyed, exc)
            if self.state == "open" and self.opened_at is None:
                self.opened_at = time.time()
                log.error(
                    "payment provider: circuit breaker open after %d failures in a row; charges and"
                    " refunds wait (nothing is lost) and one call probes again in %.0f s",
                    self.breaker.failure_count,
                    self.retry_after(),
                )
            return Unavailable(str(exc), nothing_done=exc.nothing_done)
        if self.opened_at is not None:
            log.warning(
                "payment provider: circuit breaker closed after %.0f s: the provider answers again",
                time.time() - self.opened_at,
            )
        self.opened_at = None
        self.calls[(operation, str(answer.status_code))] += 1
        return answer

    async def _send(self, method: str, path: str, key: str | None, body: dict[str, Any] | None) -> Answer:
        start = time.monotonic()
        try:
            headers = {"Idempotency-Key": key} if key is not None else {}
            traceparent = tracing.current_traceparent()
            if traceparent is not None:  # the saga's trace goes on at the provider (W3C)
                headers["traceparent"] = traceparent
            answer = await self._exchange(method, path, body, headers)
        except TimeoutError:
            raise _Failed(
                f"the provider did not answer within {self.timeout:g} s",
                nothing_done=False,
                outcome="timeout",
            ) from None
        except aiohttp.ClientConnectorError as exc:  # no connection: the request never left
            raise _Failed(
                f"the provider could not be reached ({type(exc).__name__}: {exc})",
                nothing_done=True,
                outcome="unreachable",
            ) from None
        except aiohttp.ClientError as exc:  # e.g. the connection dropped: it may have arrived
            raise _Failed(
                f"the call to the provider broke off ({type(exc).__name__}: {exc})",
                nothing_done=False,
                outcome="broken",
            ) from None
        if answer.status_code >= 500 or answer.status_code == 429:
            raise _Failed(
                f"the provider answered {answer.status_code} {_error(answer)}"
                f" after {1000 * (time.monotonic() - start):.0f} ms",
                nothing_done=answer.status_code in NOTHING_DONE_STATUSES,
                outcome=str(answer.status_code),
            )
        return answer

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)  # let the connections' close callbacks run


async def _body(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most ``MAX_ANSWER_BYTES``; raises
    ``aiohttp.ClientPayloadError`` past that, whether or not the size was announced."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise _too_big()
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _too_big()
    return bytes(body)


def _too_big() -> aiohttp.ClientPayloadError:
    """``_body``'s error, made only when it is raised (not on every call)."""
    return aiohttp.ClientPayloadError(f"the answer's body is over {MAX_ANSWER_BYTES} bytes")


def _member(answer: Answer, name: str) -> str | None:
    """The text of member ``name`` of the answer's JSON object, made safe to store
    (``printable``, at most 1000 characters: a charge's or refund's id is stored with the
    payment, and one with a NUL had PostgreSQL refuse the record of the whole round, the
    charge never recorded; a review); None if the body is not a JSON object, or has no
    such member that is a string or a number."""
    try:
        data = answer.json()
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        return None
    return printable(str(value), 1000)


def _garbled(answer: Answer, missing: str) -> Unavailable:
    """A success whose body does not say what was done (no ``missing``): the call may have
    done it, so it is asked again with the same key, and the replay says. Its body broke
    the whole worker round before (an exception out of the round's calls: every answer
    of the round dropped until the leases ended; a review found it)."""
    shown = printable(answer.text, 100)
    return Unavailable(f"answered {answer.status_code} without a {missing}: {shown!r}", nothing_done=False)


def _error(answer: Answer) -> str:
    """What an error answer says went wrong, at most 200 characters, made safe to store
    and show (``printable``): text from outside, it goes into the payment's
    ``last_error``, and a NUL or a lone surrogate in it had PostgreSQL refuse the worker's
    record of the whole round, round after round (a review)."""
    try:
        data = answer.json()
    except ValueError:
        return printable(answer.text, 200)
    if isinstance(data, dict):
        return printable(str(data.get("error") or data.get("detail") or data), 200)
    return printable(str(data), 200)
