"""How every Kafka client of this project connects: TLS, SASL/SCRAM, or neither.

One place turns the settings into what the client libraries take, so the faust consumers,
the relay's producer, the admin client that creates topics, and the tools (``sagactl``,
``sagastack``) all connect the same way:

* ``KafkaClientSettings`` reads the environment (shared by every service, and by the
  tools): ``KAFKA_SECURITY_PROTOCOL`` (``PLAINTEXT`` | ``SSL`` | ``SASL_PLAINTEXT`` |
  ``SASL_SSL``), ``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE`` / ``KAFKA_SSL_KEYFILE`` (a
  client certificate, unencrypted PEM), ``KAFKA_SASL_MECHANISM`` (``SCRAM-SHA-256`` |
  ``SCRAM-SHA-512``), ``KAFKA_SASL_USERNAME`` and ``KAFKA_SASL_PASSWORD`` or
  ``KAFKA_SASL_PASSWORD_FILE`` (the secret from the environment or from a file).
* ``KafkaClientSettings.kafka_security`` checks them and returns a ``KafkaSecurity``,
  the resolved value (the password read from its file), or raises
  ``KafkaSecurityError`` saying what is wrong.
* ``KafkaSecurity.client_kwargs`` are aiokafka's keyword arguments
  (``AIOKafkaProducer(**kwargs)``, ``AIOKafkaAdminClient``, ``AIOKafkaConsumer``);
  ``KafkaSecurity.faust_credentials`` is the same for faust (``broker_credentials``).
  The TLS context is ``aiokafka.helpers.create_ssl_context``: the broker's certificate is
  verified against the CA and its host name checked, always.

With ``production`` (``SAGA_ENV=production``) a connection that is not encrypted, or not
authenticated, is refused: ``PLAINTEXT`` and ``SASL_PLAINTEXT`` (events in clear on the
wire), and ``SSL`` without a client certificate (anyone who reaches the port may write).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from saga_kit.errors import ConfigurationError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
ScramMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurityError(ConfigurationError):
    """The Kafka security settings are incomplete, contradictory, or unfit for production
    (the message names the variables)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """A client's resolved security: protocol, TLS files, SCRAM user and password.

    The default is ``PLAINTEXT`` (the embedded development brokers). The password is kept
    out of ``repr``."""

    protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: ScramMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (CA file or the system's CAs; the client certificate if
        given; host names checked), or None without TLS. Raises ``OSError`` or
        ``ssl.SSLError`` if a file cannot be read."""
        if not self.tls:
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for this security (``security_protocol`` always;
        ``ssl_context`` with TLS; ``sasl_mechanism``, ``sasl_plain_username`` and
        ``sasl_plain_password`` with SASL — aiokafka takes SCRAM's user and password there)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """faust's ``broker_credentials`` for the same connection (None: ``PLAINTEXT``).
        faust hands them to its consumers and producer as ``client_kwargs`` would."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),  # None: SASL_PLAINTEXT, else SASL_SSL
            )
        context = self.ssl_context()
        return faust.SSLCredentials(context) if context is not None else None

    def unusable_files(self) -> list[str]:
        """Why the TLS files cannot be used (empty: they can): one that cannot be read or
        loaded (``ssl``'s words: no PEM, a key that does not match its certificate), named
        by its variable and path. An operator trial: a missing CA file stopped a service
        on a traceback naming neither the variable nor the file."""
        problems = []
        for variable, path in (
            ("KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    problems.append(f"{variable}={path} cannot be read: {exc.strerror or exc}")
        if problems:
            return problems
        # loaded one by one, so that ssl's words come with the file they are about
        loads: list[tuple[str, Callable[[ssl.SSLContext], object]]] = []
        if self.ssl_cafile:
            cafile = self.ssl_cafile
            loads.append((f"KAFKA_SSL_CAFILE={cafile}", lambda c: c.load_verify_locations(cafile=cafile)))
        if self.ssl_certfile:
            certfile, keyfile = self.ssl_certfile, self.ssl_keyfile
            named = f"KAFKA_SSL_CERTFILE={certfile}" + (
                f" with KAFKA_SSL_KEYFILE={keyfile}" if keyfile else ""
            )
            loads.append((named, lambda c: c.load_cert_chain(certfile, keyfile)))
        for named, load in loads:  # as ``ssl_context`` loads them, one by one
            try:
                load(ssl.create_default_context())
            except ssl.SSLError as exc:
                problems.append(f"{named} cannot be used: {exc.reason or exc}")
        return problems

    def refusals(self, *, production: bool) -> list[str]:
        """Why these settings cannot be used (empty: they can). Always: SASL needs a user
        and a password, and TLS or SASL settings without the protocol that uses them are a
        mistake. With ``production`` also: no TLS, or no client authentication."""
        problems = []
        if self.sasl and not (self.sasl_username and self.sasl_password):
            problems.append(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_USERNAME and"
                " KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
            )
        if not self.sasl and (self.sasl_username or self.sasl_password):
            problems.append(
                f"KAFKA_SASL_USERNAME/PASSWORD are set but KAFKA_SECURITY_PROTOCOL={self.protocol}"
                " does not use SASL (SASL_SSL does)"
            )
        if not self.tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            problems.append(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={self.protocol} does not"
                " use TLS (SSL or SASL_SSL do)"
            )
        if bool(self.ssl_keyfile) and not self.ssl_certfile:
            problems.append("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the client certificate)")
        if production:
            if not self.tls:
                problems.append(
                    f"SAGA_ENV=production refuses KAFKA_SECURITY_PROTOCOL={self.protocol}: events"
                    " would cross the network unencrypted (use SASL_SSL, or SSL with a client"
                    " certificate)"
                )
            elif not self.sasl and not self.ssl_certfile:
                problems.append(
                    "SAGA_ENV=production refuses KAFKA_SECURITY_PROTOCOL=SSL without a client"
                    " certificate (KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE): the broker would not"
                    " know who writes (or use SASL_SSL)"
                )
        return problems


class KafkaClientSettings(BaseSettings):
    """The Kafka security settings from the environment (module doc), unprefixed: shared by
    every service and read by the tools. ``ServiceSettings`` extends it."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol"),
    )
    #: the CA certificates (PEM) the broker's certificate must chain to; unset: the system's
    kafka_ssl_cafile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE", "kafka_ssl_cafile")
    )
    #: a client certificate (PEM, with its chain) and its unencrypted key (PEM), for brokers
    #: that authenticate clients by certificate
    kafka_ssl_certfile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE", "kafka_ssl_certfile")
    )
    kafka_ssl_keyfile: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE", "kafka_ssl_keyfile")
    )
    kafka_sasl_mechanism: ScramMechanism = Field(
        default="SCRAM-SHA-512",
        validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism"),
    )
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "kafka_sasl_username")
    )
    #: the password itself, or (better: not in the process environment) a file holding it;
    #: one or the other
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "kafka_sasl_password")
    )
    kafka_sasl_password_file: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD_FILE", "kafka_sasl_password_file"),
    )

    def kafka_security(self, *, production: bool = False) -> KafkaSecurity:
        """The resolved security (the password read from ``KAFKA_SASL_PASSWORD_FILE``, its
        trailing line break dropped). Raises ``KafkaSecurityError`` naming every problem:
        a password file that cannot be read, both a password and a password file, and
        ``KafkaSecurity.refusals``."""
        problems = []
        password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
        if self.kafka_sasl_password_file:
            if password is not None:
                problems.append("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
            try:
                password = Path(self.kafka_sasl_password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                problems.append(f"KAFKA_SASL_PASSWORD_FILE cannot be read: {exc.strerror or exc}")
        security = KafkaSecurity(
            protocol=self.kafka_security_protocol,
            ssl_cafile=self.kafka_ssl_cafile or None,
            ssl_certfile=self.kafka_ssl_certfile or None,
            ssl_keyfile=self.kafka_ssl_keyfile or None,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username or None,
            sasl_password=password or None,
        )
        problems += security.refusals(production=production)
        if problems:
            raise KafkaSecurityError("; ".join(problems))
        return security

    def usable_kafka_security(self, *, production: bool = False) -> KafkaSecurity:
        """``kafka_security``, and the TLS files it names can be read and loaded
        (``KafkaSecurity.unusable_files``): what a client about to connect needs. Raises
        ``KafkaSecurityError`` naming what is wrong, the file by its variable and path."""
        security = self.kafka_security(production=production)
        if problems := security.unusable_files():
            raise KafkaSecurityError("; ".join(problems))
        return security
