"""saga_kit.auth without a service: production refuses to start on keys or settings unfit
for it and says which; who may act for whom; the table names the route it lacks; a token
the development issuer made is read back as its subject and roles.

The whole matrix of routes by callers, and every kind of bad token, run against the real
services: tests/e2e/test_authorization.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from saga_kit import auth
from saga_kit.auth import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    LEEWAY_SECONDS,
    POLICY,
    Access,
    AuthConfigurationError,
    KeysUnavailable,
    PolicyError,
    Principal,
    Role,
    TokenVerifier,
    Unauthorized,
    access_of,
    check_policy,
    credentials,
    load_verifier,
    write_dev_issuer,
)
from saga_kit.signing import load_private_key
from tests.jsonserver import JsonServer

CUSTOMER = frozenset({Role.CUSTOMER})
OPERATOR = frozenset({Role.OPERATOR})


@pytest.fixture
def dev_jwks(tmp_path: Path) -> Path:
    return write_dev_issuer(tmp_path / "issuer").jwks_file


@pytest.fixture
def own_jwks(tmp_path: Path, dev_jwks: Path) -> Path:
    """The same public key in a JWKS not marked ``development`` (as an identity provider
    publishes it)."""
    path = tmp_path / "idp.jwks.json"
    path.write_text(json.dumps({"keys": json.loads(dev_jwks.read_text())["keys"]}))
    return path


# -- load_verifier ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "issuer", "audience", "named"),
    [
        (False, "https://idp.example", "saga-shop", ["AUTH_JWKS_FILE or AUTH_JWKS_URL"]),
        (True, None, "saga-shop", ["AUTH_ISSUER"]),
        (True, "https://idp.example", None, ["AUTH_AUDIENCE"]),
        (True, "", "", ["AUTH_ISSUER", "AUTH_AUDIENCE"]),
        (False, None, None, ["AUTH_JWKS_FILE or AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE"]),
    ],
)
def test_production_refuses_to_start_without_keys_issuer_or_audience_and_names_what_is_missing(
    own_jwks: Path, keys: bool, issuer: str | None, audience: str | None, named: list[str]
) -> None:
    with pytest.raises(AuthConfigurationError) as refused:
        load_verifier(str(own_jwks) if keys else None, None, issuer, audience, production=True)
    message = str(refused.value)
    assert "SAGA_ENV=production" in message
    for setting in named:
        assert setting in message
    for setting in {"AUTH_JWKS_FILE or AUTH_JWKS_URL", "AUTH_ISSUER", "AUTH_AUDIENCE"} - set(named):
        assert setting not in message, f"{setting} is set, yet named"


def test_production_refuses_the_development_jwks_and_names_it(dev_jwks: Path) -> None:
    with pytest.raises(AuthConfigurationError, match="development JWKS") as refused:
        load_verifier(str(dev_jwks), None, "https://idp.example", "saga-shop", production=True)
    assert str(dev_jwks) in str(refused.value)


def test_production_starts_on_its_own_keys_issuer_and_audience(own_jwks: Path) -> None:
    verifier = load_verifier(str(own_jwks), None, "https://idp.example", "saga-shop", production=True)
    assert isinstance(verifier, TokenVerifier)
    assert (verifier.issuer, verifier.audience) == ("https://idp.example", "saga-shop")


def test_development_without_keys_turns_authentication_off(dev_jwks: Path) -> None:
    assert load_verifier(None, None, None, None, production=False) is None
    verifier = load_verifier(str(dev_jwks), None, None, None, production=False)
    assert verifier is not None and (verifier.issuer, verifier.audience) == (DEV_ISSUER, DEV_AUDIENCE)


def test_unreadable_keys_stop_the_start_not_a_request(tmp_path: Path) -> None:
    broken = tmp_path / "jwks.json"
    broken.write_text('{"keys": [{"kty": "nonsense"}]}')
    with pytest.raises(
        AuthConfigurationError, match=r"AUTH_JWKS_FILE=.*jwks.json cannot be used: PyJWKSetError"
    ):
        load_verifier(str(broken), None, None, None, production=False)
    with pytest.raises(AuthConfigurationError):
        TokenVerifier(DEV_ISSUER, DEV_AUDIENCE)  # neither a file nor a URL


# -- who acts for whom -------------------------------------------------------------------


def test_a_customer_acts_for_itself_only_and_the_operator_for_everyone() -> None:
    ann = Principal("ann", CUSTOMER)
    assert ann.may_act_for("ann")
    assert not ann.may_act_for("bob")
    assert not ann.may_act_for("Ann") and not ann.may_act_for("ann ") and not ann.may_act_for("")
    operator = Principal("ops-1", OPERATOR)
    assert operator.may_act_for("ann") and operator.may_act_for("bob") and operator.may_act_for("ops-1")
    assert Principal("ann", CUSTOMER | OPERATOR).may_act_for("bob")
    # a subject without the customer role is nobody's customer, even its own
    assert not Principal("ann", frozenset()).may_act_for("ann")


@pytest.mark.parametrize(
    ("access", "customer", "operator", "nobody"),
    [
        (Access.PUBLIC, True, True, True),
        (Access.ANY_ROLE, True, True, False),
        (Access.OWN, True, True, False),
        (Access.OPERATOR, False, True, False),
    ],
)
def test_which_roles_a_route_lets_in(access: Access, customer: bool, operator: bool, nobody: bool) -> None:
    assert Principal("ann", CUSTOMER).allowed(access) is customer
    assert Principal("ops", OPERATOR).allowed(access) is operator
    assert Principal("x", frozenset()).allowed(access) is nobody


# -- the table -------------------------------------------------------------------------------


#: What anyone may call without a token, and what a customer may call at all (its own
#: resources only, where the route serves a customer's): everything else is the operator's.
#: The e2e matrix proves the services do what ``POLICY`` says; this, that ``POLICY`` says
#: what is meant — opening a route to more callers is a decision made in both places.
EVERYONE = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/static/{name}"),
}
CUSTOMERS = {
    ("GET", "/products"): Access.ANY_ROLE,
    ("GET", "/products/{product_id}"): Access.ANY_ROLE,
    ("POST", "/orders"): Access.OWN,
    ("GET", "/orders"): Access.OWN,
    ("GET", "/orders/{order_id}"): Access.OWN,
    ("GET", "/orders/{order_id}/saga"): Access.OWN,
    ("POST", "/orders/{order_id}/cancel"): Access.OWN,
    ("GET", "/commands/{command_id}"): Access.OWN,  # the commands about its own orders
    ("GET", "/accounts/{customer_id}"): Access.OWN,
    ("GET", "/payments/{order_id}"): Access.OWN,
}


def test_the_table_opens_to_everyone_and_to_customers_only_what_it_means_to() -> None:
    assert {route for route, access in POLICY.items() if access is Access.PUBLIC} == EVERYONE
    customers = {route: a for route, a in POLICY.items() if a in (Access.ANY_ROLE, Access.OWN)}
    assert customers == CUSTOMERS


def test_check_policy_names_every_route_the_table_lacks() -> None:
    listed = list(POLICY)
    check_policy([*listed, ("GET", "/openapi.json"), ("GET", "/docs")])  # the docs are public
    with pytest.raises(PolicyError) as refused:
        check_policy([*listed, ("DELETE", "/orders/{order_id}"), ("GET", "/refunds"), ("GET", "/refunds")])
    message = str(refused.value)
    assert "DELETE /orders/{order_id}" in message and "GET /refunds" in message
    assert message.count("GET /refunds") == 1
    assert "GET /orders/{order_id}" not in message.replace("DELETE /orders/{order_id}", "")
    # the same path with another method is another route
    with pytest.raises(PolicyError, match="PUT /orders"):
        check_policy([("PUT", "/orders")])


def test_access_of_a_route() -> None:
    assert access_of("GET", "/orders/{order_id}") is Access.OWN
    assert access_of("GET", "/redoc") is Access.PUBLIC
    assert access_of("GET", "/metrics") is Access.OPERATOR
    assert access_of("GET", "/metrics", metrics_public=True) is Access.PUBLIC
    assert access_of("GET", "/dead-letters", metrics_public=True) is Access.OPERATOR
    with pytest.raises(PolicyError, match="GET /nowhere"):
        access_of("GET", "/nowhere")


# -- tokens ----------------------------------------------------------------------------------


async def test_a_development_token_reads_back_as_its_subject_and_known_roles(tmp_path: Path) -> None:
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    token = issuer.mint("ann", [Role.CUSTOMER, "auditor"])
    assert await verifier.principal(f"Bearer {token}") == Principal("ann", CUSTOMER)
    assert await verifier.principal(f"bearer {token}") == Principal("ann", CUSTOMER)
    with pytest.raises(Unauthorized) as missing:
        await verifier.principal(None)
    assert missing.value.reason == "missing_token"
    with pytest.raises(Unauthorized) as foreign:
        await verifier.principal(f"Bearer {issuer.mint('ann', [Role.CUSTOMER], audience='elsewhere')}")
    assert (foreign.value.reason, foreign.value.detail) == (
        "invalid_token",
        "the token is not meant for this audience",
    )


async def test_an_empty_authorization_value_is_no_credentials(tmp_path: Path) -> None:
    """An attack trial: two empty ``Authorization`` headers were "2 Authorization headers"
    on a protected route and no token on the readiness probe. Empty (or space and tab
    only) is no credentials everywhere; HTTP's whitespace is not Python's: a no-break space
    says something, and is not a token."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    token = f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}"
    assert credentials(["", " \t", token, "\xa0"]) == [token, "\xa0"]
    for nothing in ([], [""], ["", "  "], ["\t"]):
        with pytest.raises(Unauthorized) as missing:
            await verifier.principal_of(nothing)
        assert missing.value.reason == "missing_token", nothing
    assert await verifier.principal_of(["", token]) == Principal("ann", CUSTOMER)
    assert await verifier.principal_of([f" {token}\t"]) == Principal("ann", CUSTOMER)
    for something in (["\xa0"], ["Bearer \xa0"], [token, token], [token, "\xa0"]):
        with pytest.raises(Unauthorized) as refused:
            await verifier.principal_of(something)
        assert refused.value.reason == "invalid_token", something


def test_the_development_issuer_keeps_its_key_and_publishes_extra_ones(tmp_path: Path) -> None:
    directory = tmp_path / "issuer"
    first = json.loads(write_dev_issuer(directory).jwks_file.read_text())
    assert first["development"] is True and [k["alg"] for k in first["keys"]] == ["EdDSA"]
    assert "d" not in first["keys"][0], "the JWKS holds the public key only"
    assert (directory / "issuer.pem").stat().st_mode & 0o077 == 0
    other = write_dev_issuer(tmp_path / "other")
    (directory / "extra.jwks.json").write_text(other.jwks_file.read_text())
    both = json.loads(write_dev_issuer(directory).jwks_file.read_text())
    assert both["keys"] == first["keys"] + json.loads(other.jwks_file.read_text())["keys"]


async def test_a_verified_token_is_taken_again_without_verifying_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])  # the cache's clock (and mint's)
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = issuer.mint("ann", [Role.CUSTOMER], ttl_seconds=60)
    for _ in range(3):
        assert await verifier.principal(f"Bearer {token}") == Principal("ann", CUSTOMER)
    assert len(decoded) == 1  # verified once, then taken from the cache
    other = issuer.mint("bob", [Role.CUSTOMER], ttl_seconds=60)
    assert await verifier.principal(f"Bearer {other}") == Principal("bob", CUSTOMER)
    assert len(decoded) == 2  # another token is verified on its own
    clock[0] += 60 + LEEWAY_SECONDS + 1  # past exp and the leeway: no longer cached
    await verifier.principal(f"Bearer {token}")
    assert decoded[-1] == token and len(decoded) == 3


async def test_a_cached_token_is_refused_once_its_key_is_no_longer_published(tmp_path: Path) -> None:
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    token = issuer.mint("ann", [Role.CUSTOMER])
    assert await verifier.principal(f"Bearer {token}") == Principal("ann", CUSTOMER)
    elsewhere = write_dev_issuer(tmp_path / "elsewhere")  # the JWKS now lists another key only
    published = issuer.jwks_file.stat().st_mtime_ns
    issuer.jwks_file.write_text(elsewhere.jwks_file.read_text())
    os.utime(issuer.jwks_file, ns=(published + 10**9, published + 10**9))  # a visible change
    with pytest.raises(Unauthorized) as refused:
        await verifier.principal(f"Bearer {token}")
    assert refused.value.detail == "the token is signed with a key this service does not trust"


@pytest.mark.parametrize("subject", ["alice\x00", "\ud800x", "bo\nb", "x" * 256, ""])
async def test_a_subject_that_is_no_name_is_an_invalid_token(tmp_path: Path, subject: str) -> None:
    """Even from the trusted issuer: such a subject once answered 500 on GET /orders and
    broke the audit entry of an operator's change."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    with pytest.raises(Unauthorized) as refused:
        await verifier.principal(f"Bearer {issuer.mint(subject, [Role.OPERATOR])}")
    assert refused.value.reason == "invalid_token" and "sub claim" in refused.value.detail


@pytest.mark.parametrize(
    ("claim", "value", "said"),
    [
        ("sub", 42, "Subject must be a string"),
        ("exp", "soon", "Expiration Time claim (exp) must be an"),
        # PyJWT reads a numeric string as a number; RFC 7519 §2's NumericDate is a JSON number
        ("exp", "4102444800", "the token's exp claim is not a number"),
        ("iat", "1", "the token's iat claim is not a number"),
        # no float holds it: a 500 and a traceback in every service (an attack trial)
        ("exp", 10**309, "the token's exp claim is out of range (beyond the year 9999)"),
        ("nbf", -(10**309), "the token's nbf claim is out of range"),
    ],
)
async def test_a_malformed_claim_is_named_in_words(tmp_path: Path, claim: str, value: Any, said: str) -> None:
    """Such a token was refused as "the token is not valid: InvalidSubjectError" (or
    "DecodeError"): a class name, not what is wrong."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    claims = jwt.decode(issuer.mint("ann", [Role.CUSTOMER]), options={"verify_signature": False})
    claims[claim] = value
    kid = (issuer.directory / "issuer.kid").read_text().strip()
    key = load_private_key(issuer.directory / "issuer.pem")
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
    with pytest.raises(Unauthorized) as refused:
        await verifier.principal(f"Bearer {token}")
    assert refused.value.reason == "invalid_token" and said in refused.value.detail, refused.value.detail


async def test_a_token_with_a_critical_extension_is_named_for_it_not_called_no_jwt(tmp_path: Path) -> None:
    """RFC 7515 §4.1.11: a ``crit`` extension the verifier does not know makes the token
    invalid — and says so, where it read "the token is not a JWT"."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = load_verifier(str(issuer.jwks_file), None, None, None, production=False)
    assert verifier is not None
    claims = jwt.decode(issuer.mint("ann", [Role.CUSTOMER]), options={"verify_signature": False})
    kid = (issuer.directory / "issuer.kid").read_text().strip()
    key = load_private_key(issuer.directory / "issuer.pem")
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "crit": ["x-new"], "x-new": 1})
    with pytest.raises(Unauthorized) as refused:
        await verifier.principal(f"Bearer {token}")
    assert refused.value.detail == "the token is not valid: Unsupported critical extension: x-new"


# -- keys that cannot be had -----------------------------------------------------------------


async def test_a_key_server_that_is_away_is_keys_unavailable_not_an_invalid_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid token checked while the key server does not answer was a 401 (and a command
    refused for good): nothing is known of it, so it is neither taken nor refused."""
    monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)  # asked again at once, here
    issuer = write_dev_issuer(tmp_path / "issuer")
    token = f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}"
    with JsonServer(issuer.jwks_file.read_bytes(), down=True) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        with pytest.raises(KeysUnavailable, match="the key server answered 503"):
            await verifier.principal(token)
        server.down = False  # back: the same token is taken
        assert await verifier.principal(token) == Principal("ann", CUSTOMER)
        other = write_dev_issuer(tmp_path / "other")  # a key the server does not publish
        with pytest.raises(Unauthorized, match="a key this service does not trust"):
            await verifier.principal(f"Bearer {other.mint('ann', [Role.CUSTOMER])}")


async def test_a_key_file_that_cannot_be_read_is_keys_unavailable(tmp_path: Path) -> None:
    issuer = write_dev_issuer(tmp_path / "issuer")
    verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_file=str(issuer.jwks_file))
    token = f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}"
    saved = issuer.jwks_file.read_text()
    issuer.jwks_file.write_text(saved[: len(saved) // 2])  # caught mid-write
    with pytest.raises(KeysUnavailable, match="the key file cannot be read"):
        await verifier.principal(token)
    issuer.jwks_file.write_text(saved)
    os.utime(issuer.jwks_file, (time.time() + 5, time.time() + 5))  # a modification it sees
    assert await verifier.principal(token) == Principal("ann", CUSTOMER)


def _jwks_of(*issuers: Any) -> bytes:
    return json.dumps(
        {"keys": [k for i in issuers for k in json.loads(i.jwks_file.read_text())["keys"]]}
    ).encode()


@pytest.mark.parametrize(
    "answer", [b"<html><body>maintenance</body></html>", b"[]", b"null", b'{"keys": []}', b'{"keys": 3}']
)
async def test_a_key_server_answering_no_key_set_is_keys_unavailable_never_a_500(
    tmp_path: Path, answer: bytes
) -> None:
    """A maintenance page raised PyJWT's client's JSONDecodeError out of the check: a 500
    (an attack trial); other answers that are no key set were a 401 or a 503 by chance."""
    issuer = write_dev_issuer(tmp_path / "issuer")
    with JsonServer(answer) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        with pytest.raises(KeysUnavailable):
            await verifier.principal(f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}")


async def test_a_key_server_that_drips_its_answer_is_given_up_on_within_the_fetch_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read waited up to the timeout, and a server sending a byte every 3 s held a
    check for 60 s: the whole fetch is bounded now (here a server that takes 2 s)."""
    monkeypatch.setattr(auth, "JWKS_FETCH_TIMEOUT_SECONDS", 0.3)
    issuer = write_dev_issuer(tmp_path / "issuer")
    with JsonServer(issuer.jwks_file.read_bytes(), delay=2.0) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        with pytest.raises(KeysUnavailable, match=r"did not answer within 0\.3 s"):
            await verifier.principal(f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}")


async def test_keys_fetched_before_verify_while_the_server_is_away_and_unknown_keys_do_not_refetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of tokens naming keys nobody published made each check fetch, one at a time
    for up to 5 s each, and tokens verified before waited behind them (an attack trial)."""
    issuer, other = write_dev_issuer(tmp_path / "issuer"), write_dev_issuer(tmp_path / "other")
    token = f"Bearer {issuer.mint('ann', [Role.CUSTOMER])}"
    with JsonServer(_jwks_of(issuer)) as server:
        verifier = TokenVerifier(DEV_ISSUER, DEV_AUDIENCE, jwks_url=server.url)
        assert await verifier.principal(token) == Principal("ann", CUSTOMER)
        server.asked.clear()
        for _ in range(20):  # within the cooldown: no fetch for a key it does not have
            with pytest.raises(Unauthorized, match="does not trust"):
                await verifier.principal(f"Bearer {other.mint('ann', [Role.CUSTOMER])}")
        assert not server.asked.is_set()
        # the set is due again, and the server is away: the keys fetched last still verify
        monkeypatch.setattr(auth, "JWKS_LIFESPAN_SECONDS", 0.0)
        monkeypatch.setattr(auth, "JWKS_REFRESH_COOLDOWN_SECONDS", 0.0)
        server.down = True
        assert await verifier.principal(f"Bearer {issuer.mint('bob', [Role.CUSTOMER])}") == Principal(
            "bob", CUSTOMER
        )
        server.asked.clear()
        for _ in range(20):  # and a failed fetch is not tried again at once
            with pytest.raises(KeysUnavailable):
                await verifier.principal(f"Bearer {other.mint('ann', [Role.CUSTOMER])}")
        assert not server.asked.is_set()
        # a key published since is found once the server answers again
        monkeypatch.setattr(auth, "JWKS_RETRY_SECONDS", 0.0)
        server.jwks, server.down = _jwks_of(issuer, other), False
        assert await verifier.principal(f"Bearer {other.mint('cy', [Role.CUSTOMER])}") == Principal(
            "cy", CUSTOMER
        )
