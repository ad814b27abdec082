"""Signed events: which events are real.

Anyone who can write to a topic could otherwise publish a ``PaymentCompleted`` and have an
order approved without paying. So every record a service publishes is signed with that
service's **Ed25519** key (nothing home-made: keys are read and written with
``cryptography``; signing and verifying, once per record, go through libsodium by PyNaCl,
which on this project's machine verifies in ~43 µs where OpenSSL through ``cryptography``
takes ~91 µs, and signs in ~19 µs against ~30 — RFC 8032 signatures, byte for byte the
same), and every consumer checks
the signature **before decoding** anything, then that the signer is the rightful producer
of the event's type (only payment may emit ``PaymentCompleted``). Unsigned, forged or
tampered records become dead letters with reason ``bad_signature``; nothing is applied.

What is signed — the exact bytes on the wire and the routing fields that matter::

    b"saga-event/1\\0" + topic + b"\\0" + key + b"\\0" + value

so a signed value cannot be replayed onto another topic or under another key. The
signature travels in two headers: ``sig.kid`` (the key id) and ``sig.ed25519`` (base64).

Keys rotate by id: a service signs with one key; consumers accept every key their
**trust file** lists (JSON: ``{"keys": [{"kid", "service", "public_key"}]}``, the public
key base64 of its 32 raw bytes), so a new key is added to the trust file first, then used,
and the old one is removed once nothing signed with it is in flight.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.codec import ReasonCode, coded_reason
from saga_kit.errors import ConfigurationError, setting_file
from saga_kit.headers import Header, Headers

KID = "sig.kid"
SIGNATURE = "sig.ed25519"
#: The start of a dead letter's reason when its record's signature did not verify.
REASON: ReasonCode = "bad_signature"
_DOMAIN = b"saga-event/1\0"


class KeyConfigurationError(ConfigurationError):
    """The service's keys are missing or unfit for where it runs (the message says which)."""


class BadSignature(Exception):
    """The record is not signed by a key this service trusts, or not by the right one."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = coded_reason(REASON, detail)


def _signed_bytes(topic: str, key: bytes | None, value: bytes | None) -> bytes:
    return b"".join((_DOMAIN, topic.encode(), b"\0", key or b"", b"\0", value or b""))


@dataclass(frozen=True)
class Signer:
    """Signs what one service publishes."""

    kid: str
    private_key: Ed25519PrivateKey
    #: the same key in libsodium (PyNaCl), which signs it (module doc: the hot path)
    _sodium: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        object.__setattr__(self, "_sodium", nacl.signing.SigningKey(raw))

    def headers(self, topic: str, key: bytes | None, value: bytes | None) -> list[Header]:
        signature = self._sodium.sign(_signed_bytes(topic, key, value)).signature
        return [(KID, self.kid.encode()), (SIGNATURE, base64.b64encode(signature))]


@dataclass(frozen=True)
class Verifier:
    """Checks what a service consumes against its trust file."""

    #: key id → (the service that signs with it, its public key)
    keys: Mapping[str, tuple[str, Ed25519PublicKey]]
    #: key id → (the service, the same public key in libsodium, which verifies)
    _sodium: Mapping[str, tuple[str, nacl.signing.VerifyKey]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        sodium = {
            kid: (svc, nacl.signing.VerifyKey(key.public_bytes(*raw)))
            for kid, (svc, key) in self.keys.items()
        }
        object.__setattr__(self, "_sodium", sodium)

    def signer(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> str:
        """The service that signed this record; raises ``BadSignature`` otherwise — also
        for a record that carries a signature header twice (which one counts would be up
        to each reader: an attack trial's record with two pairs was judged by the last)."""
        found: dict[str, bytes | None] = {}
        for name, header in headers:
            if name in (KID, SIGNATURE):
                if name in found:
                    raise BadSignature(f"the record carries {name} more than once: a record is signed once")
                found[name] = header
        kid, signature = found.get(KID), found.get(SIGNATURE)
        if kid is None or signature is None:
            raise BadSignature("the record is not signed")
        trusted = self._sodium.get(kid.decode("utf-8", "replace"))
        if trusted is None:
            raise BadSignature("signed with a key this service does not trust")
        service, public_key = trusted
        try:
            public_key.verify(_signed_bytes(topic, key, value), base64.b64decode(signature, validate=True))
        except (nacl.exceptions.BadSignatureError, ValueError):  # a bad length or base64: ValueError
            raise BadSignature("the signature does not match the record (forged or tampered)") from None
        return service


def load_private_key(key_file: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file; ``ValueError`` if it is another kind."""
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_file}: not an Ed25519 private key")
    return key


def write_private_key(pem: Path) -> None:
    """A new Ed25519 private key in ``pem`` (PKCS#8, readable by the owner only), unless
    the file exists: development keys are kept across runs."""
    if pem.exists():
        return
    private = Ed25519PrivateKey.generate()
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pem.chmod(0o600)


def load_signer(key_file: str | os.PathLike[str], kid: str) -> Signer:
    """A signer from a PEM (PKCS#8) private key file."""
    return Signer(kid, load_private_key(key_file))


def load_verifier(trust_file: str | os.PathLike[str]) -> Verifier:
    """A verifier from a trust file (module doc)."""
    entries = json.loads(Path(trust_file).read_text())["keys"]
    return _verifier(entries)


def _verifier(entries: list[dict[str, str]]) -> Verifier:
    keys = {
        entry["kid"]: (
            entry["service"],
            Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public_key"])),
        )
        for entry in entries
    }
    return Verifier(keys)


def _signing_variable(service: str, what: str) -> str:
    """The variable of ``service``'s signing setting ``what``: ``ORDER_EVENT_SIGNING_KEY_FILE``."""
    return f"{service.split('_')[0].upper()}_EVENT_SIGNING_{what}"


def load_keys(
    service: str,
    key_file: str | None,
    kid: str | None,
    trust_file: str | None,
    *,
    production: bool,
) -> tuple[Signer | None, Verifier | None]:
    """The service's signer and verifier from its settings.

    In development either may be absent (nothing is then signed, or nothing verified). In
    production (``SAGA_ENV=production``) both are required and the trust file must not be
    the development one ``write_dev_keys`` makes; otherwise ``KeyConfigurationError`` names
    what is wrong, and the service does not start.
    """
    missing = [
        name
        for name, value in (
            (_signing_variable(service, "KEY_FILE"), key_file),
            (_signing_variable(service, "KID"), kid),
            ("EVENT_TRUST_FILE", trust_file),
        )
        if not value
    ]
    if production and missing:
        raise KeyConfigurationError(f"SAGA_ENV=production needs {', '.join(missing)}")
    signer = None
    if key_file:
        with setting_file(_signing_variable(service, "KEY_FILE"), key_file, KeyConfigurationError):
            signer = load_signer(key_file, kid or service)
    verifier = None
    if trust_file:
        with setting_file("EVENT_TRUST_FILE", trust_file, KeyConfigurationError):
            document = json.loads(Path(trust_file).read_text())
            development = document.get("development")
            verifier = _verifier(document["keys"])
        if production and development:
            raise KeyConfigurationError(
                f"SAGA_ENV=production refuses the development trust file {trust_file}"
                " (made by make run / make demo / the tests)"
            )
    if verifier is not None and signer is not None and verifier.keys.get(signer.kid, ("",))[0] != service:
        raise KeyConfigurationError(f"the trust file does not list key {signer.kid!r} as {service}'s")
    return signer, verifier


def write_dev_keys(directory: Path, services: Iterable[str]) -> Path:
    """Development keys: one Ed25519 key per service under ``directory`` (``<service>.pem``,
    readable by the owner only) and the trust file listing their public keys
    (``trust.json``); returns the trust file. Existing keys are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for service in services:
        pem = directory / f"{service}.pem"
        write_private_key(pem)
        kid_file = directory / f"{service}.kid"
        if not kid_file.exists():
            kid_file.write_text(f"{service}-{secrets.token_hex(4)}")
        signer = load_signer(pem, kid_file.read_text().strip())
        public = signer.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        entries.append(
            {"kid": signer.kid, "service": service, "public_key": base64.b64encode(public).decode()}
        )
    trust = directory / "trust.json"
    # "development": a service with SAGA_ENV=production refuses this file (load_keys)
    trust.write_text(json.dumps({"development": True, "keys": entries}, indent=2) + "\n")
    return trust
