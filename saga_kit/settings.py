"""One ``Settings`` base for every service; each service subclasses it with its prefix.

Environment variables: ``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_TOPIC_PARTITIONS``,
``KAFKA_TOPIC_REPLICATION``, ``KAFKA_IDEMPOTENT_PRODUCER``, ... (shared), and per service
``<PREFIX>_DATABASE_URL``, ``<PREFIX>_HTTP_HOST``, ``<PREFIX>_HTTP_PORT`` where PREFIX is
``ORDER``, ``INVENTORY`` or ``PAYMENT``. Nothing is read at import time: settings are
built in each service's ``__main__``.

The Kafka security settings (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SSL_*``,
``KAFKA_SASL_*``) are declared once, in ``saga_kit.kafka_security.KafkaClientSettings``,
which ``ServiceSettings`` extends; the tools read the same class.

``<PREFIX>_DATABASE_URL`` reaches the driver as given, query included: ``?sslmode=verify-full
&sslrootcert=/path/ca.pem`` (libpq's parameters) makes psycopg connect over TLS and check
the server's certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from events.values import error_words
from saga_kit import fault_injection, logs
from saga_kit.auth import TokenVerifier, load_verifier
from saga_kit.heap import DEFAULT_GEN0_THRESHOLD
from saga_kit.kafka_security import KafkaClientSettings, KafkaSecurity
from saga_kit.retry import RetryPolicy
from saga_kit.urls import http_url, kafka_bootstrap

#: How long a consumer fetch may wait on the broker for data. Apache Kafka answers as soon
#: as data arrives; the embedded Tansu answers only when the wait ends, so there this is
#: most of an idle saga hop, and the supervisor gives the services a short idle wait
#: (``KAFKA_FETCH_IDLE_WAIT_MS``; saga_kit.faust_app.FetchPacer;
#: docs/benchmark.md, the fetch wait).
DEFAULT_FETCH_MAX_WAIT_MS = 100


class ServiceSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(description="PostgreSQL URL of this service's own database (postgresql://...)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(ge=0, le=65535)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
    )
    topic_partitions: int = Field(
        default=6, ge=1, validation_alias=AliasChoices("KAFKA_TOPIC_PARTITIONS", "topic_partitions")
    )
    topic_replication: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("KAFKA_TOPIC_REPLICATION", "topic_replication"),
    )

    #: The relay's producer with ``enable_idempotence`` (no duplicates from its own retries,
    #: per-partition order kept across them). Off by default because the embedded Tansu
    #: broker cannot do it (docs/design.md §2); ``System`` turns it on when it started
    #: Apache Kafka. Either way the inbox makes a duplicate harmless.
    kafka_idempotent_producer: bool = Field(
        default=False,
        validation_alias=AliasChoices("KAFKA_IDEMPOTENT_PRODUCER", "kafka_idempotent_producer"),
    )

    #: How long a consumer fetch may wait on the broker for data (saga_kit.faust_app).
    kafka_fetch_max_wait_ms: int = Field(
        default=DEFAULT_FETCH_MAX_WAIT_MS,
        ge=0,
        le=30_000,
        validation_alias=AliasChoices("KAFKA_FETCH_MAX_WAIT_MS", "kafka_fetch_max_wait_ms"),
    )

    #: The fetch wait while the consumer is idle (ms; saga_kit.faust_app.FetchPacer), for a
    #: broker that answers a fetch only when its wait ends (Tansu). None: always
    #: ``kafka_fetch_max_wait_ms``.
    kafka_fetch_idle_wait_ms: int | None = Field(
        default=None,
        ge=1,
        le=30_000,
        validation_alias=AliasChoices("KAFKA_FETCH_IDLE_WAIT_MS", "kafka_fetch_idle_wait_ms"),
    )

    #: A consumer batch: at most this many records, or what arrived within the linger.
    consumer_batch_max: int = Field(
        default=500, ge=1, validation_alias=AliasChoices("CONSUMER_BATCH_MAX", "consumer_batch_max")
    )
    consumer_batch_linger_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        validation_alias=AliasChoices("CONSUMER_BATCH_LINGER_MS", "consumer_batch_linger_ms"),
    )
    #: Seconds a partition may wait behind its end with none of its records processed
    #: before the consumer counts it stalled and reads it again (saga_kit.progress).
    consumer_stall_seconds: float = Field(
        default=20.0,
        ge=1,
        le=3600,
        validation_alias=AliasChoices("CONSUMER_STALL_SECONDS", "consumer_stall_seconds"),
    )
    #: Seconds each readiness check may take before ``/health/ready`` counts it failed
    #: (``saga_kit.http.health_router``; the checks run side by side). Below a probe's own
    #: timeout, or the probe gets no answer rather than a 503 that says why: a broker that
    #: hangs took each check its 2 s (an attack trial), and Kubernetes' default is 1 s.
    readiness_check_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        validation_alias=AliasChoices("READINESS_CHECK_SECONDS", "readiness_check_seconds"),
    )
    #: The one retry policy (saga_kit.retry): first wait, longest wait, random extra.
    retry_initial_seconds: float = Field(
        default=0.05, gt=0, validation_alias=AliasChoices("RETRY_INITIAL_SECONDS", "retry_initial_seconds")
    )
    retry_max_seconds: float = Field(
        default=5.0, gt=0, validation_alias=AliasChoices("RETRY_MAX_SECONDS", "retry_max_seconds")
    )
    retry_jitter_seconds: float = Field(
        default=0.1, ge=0, validation_alias=AliasChoices("RETRY_JITTER_SECONDS", "retry_jitter_seconds")
    )
    #: How long a starting service waits for its database, broker and consumer group's
    #: coordinator (each) before it gives up and exits 1 (a supervisor restarts it).
    startup_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        validation_alias=AliasChoices("STARTUP_TIMEOUT_SECONDS", "startup_timeout_seconds"),
    )

    #: The handler-error limit (saga_kit.consumer.HandlerErrorLimit): valid events a failing
    #: reaction may dead-letter, in a row and as a share of the recent ones.
    dlq_max_consecutive_handler_errors: int = Field(
        default=10,
        ge=0,
        validation_alias=AliasChoices(
            "DLQ_MAX_CONSECUTIVE_HANDLER_ERRORS", "dlq_max_consecutive_handler_errors"
        ),
    )
    dlq_max_handler_error_ratio: float = Field(
        default=0.05,
        ge=0,
        le=1,
        validation_alias=AliasChoices("DLQ_MAX_HANDLER_ERROR_RATIO", "dlq_max_handler_error_ratio"),
    )

    relay_batch_size: int = Field(default=1000, ge=1)
    relay_poll_interval: float = Field(default=0.5, gt=0)
    #: How long the outbox relay waits for the broker to acknowledge a batch before it
    #: logs a WARNING saying so (then it waits on; saga_kit.outbox).
    relay_ack_warning_seconds: float = Field(default=10.0, gt=0, le=3600)
    db_pool_size: int = Field(default=10, ge=1)

    #: Pruning (saga_kit.pruning): sent outbox rows, the inbox's redelivery window and
    #: resolved dead letters are kept this long; the pruner runs every interval.
    outbox_retention_seconds: float = Field(default=3600.0, ge=0)
    inbox_retention_seconds: float = Field(default=7 * 24 * 3600.0, ge=0)
    dead_letter_retention_seconds: float = Field(default=30 * 24 * 3600.0, ge=0)
    prune_interval_seconds: float = Field(default=60.0, gt=0)
    prune_batch: int = Field(default=5000, ge=1)

    #: ``production`` refuses to start without signing keys, or on development ones
    saga_env: Literal["development", "production"] = Field(
        default="development", validation_alias=AliasChoices("SAGA_ENV", "saga_env")
    )

    #: Signed events (saga_kit.signing): this service's Ed25519 key (PEM) and its key id;
    #: the trust file of every service's public keys (shared: ``EVENT_TRUST_FILE``). With a
    #: trust file, every consumed domain event must be signed by its rightful producer.
    event_signing_key_file: str | None = None
    event_signing_kid: str | None = None
    event_trust_file: str | None = Field(
        default=None, validation_alias=AliasChoices("EVENT_TRUST_FILE", "event_trust_file")
    )

    #: Authentication of the HTTP APIs (saga_kit.auth): the public keys tokens are checked
    #: against (a JWKS file, re-read when it changes, or URL), the issuer and audience they
    #: must name, and whether ``/metrics`` may be scraped without a token. Without keys a
    #: development service lets everyone in; production refuses to start.
    auth_jwks_file: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTH_JWKS_FILE", "auth_jwks_file")
    )
    auth_jwks_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTH_JWKS_URL", "auth_jwks_url")
    )
    auth_issuer: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_ISSUER", "auth_issuer"))
    auth_audience: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTH_AUDIENCE", "auth_audience")
    )
    auth_metrics_public: bool = Field(
        default=False, validation_alias=AliasChoices("AUTH_METRICS_PUBLIC", "auth_metrics_public")
    )

    #: Where the consumer framework keeps its local files (faust's data directory); a
    #: fresh temporary directory when unset, never the working directory.
    data_dir: str | None = Field(default=None, validation_alias=AliasChoices("SAGA_DATA_DIR", "data_dir"))

    #: HTTP hygiene (saga_kit.http.RequestGuard), shared by every service:
    #: the Host names a request may name (DNS rebinding), comma-separated;
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=["127.0.0.1", "localhost", "::1"],
        validation_alias=AliasChoices("HTTP_ALLOWED_HOSTS", "http_allowed_hosts"),
    )
    #: the other origins (``scheme://host:port``) whose pages may change state here, besides
    #: the service's own; none by default: a cross-origin POST is refused (403);
    http_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default=[], validation_alias=AliasChoices("HTTP_ALLOWED_ORIGINS", "http_allowed_origins")
    )
    #: the largest request body, in bytes (larger: 413).
    http_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("HTTP_MAX_BODY_BYTES", "http_max_body_bytes"),
    )

    #: the largest request head (request line and headers), in bytes (larger: 431, and
    #: the connection is closed);
    http_max_header_bytes: int = Field(
        default=64 * 1024,
        ge=4096,
        validation_alias=AliasChoices("HTTP_MAX_HEADER_BYTES", "http_max_header_bytes"),
    )
    #: how long a request line and headers may take to arrive, in seconds (longer: 408,
    #: and the connection is closed);
    http_header_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("HTTP_HEADER_TIMEOUT_SECONDS", "http_header_timeout_seconds"),
    )
    #: how long a request's body may take to arrive once a route reads it, in seconds
    #: (longer: 408, and the connection is closed).
    http_body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("HTTP_BODY_TIMEOUT_SECONDS", "http_body_timeout_seconds"),
    )
    #: how long a route may take to start its answer, in seconds, counted from the request
    #: or the last part of its body (longer: 503 ``service_unavailable`` with
    #: ``Retry-After``, ``saga_kit.http.AnswerDeadline``): below sagactl's 10 s, so it
    #: hears why.
    http_answer_timeout_seconds: float = Field(
        default=8.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("HTTP_ANSWER_TIMEOUT_SECONDS", "http_answer_timeout_seconds"),
    )

    @field_validator("http_allowed_hosts", "http_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    #: The cyclic garbage collector's youngest-generation threshold once the service has
    #: started, with the start-up heap frozen (``saga_kit.heap.settle``); 0 leaves
    #: Python's own (700, nothing frozen).
    gc_gen0_threshold: int = Field(
        default=DEFAULT_GEN0_THRESHOLD,
        ge=0,
        validation_alias=AliasChoices("GC_GEN0_THRESHOLD", "gc_gen0_threshold"),
    )

    #: The lowest level logged, in any case (``debug`` is ``DEBUG``).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level")
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    #: Tracing (saga_kit.tracing): ``none``, ``otlp`` (to OTEL_EXPORTER_OTLP_ENDPOINT) or
    #: ``file`` (JSON lines under ``tracing_dir``).
    tracing_exporter: Literal["none", "otlp", "file"] = Field(
        default="none", validation_alias=AliasChoices("TRACING_EXPORTER", "tracing_exporter")
    )
    tracing_dir: str | None = Field(default=None, validation_alias=AliasChoices("TRACING_DIR", "tracing_dir"))
    #: Continue the trace of an HTTP caller's ``traceparent``, or a command record's (true),
    #: or start a trace of the request's (the command's) own, linked to it (false, the
    #: default: any caller could name another's trace, and its audit entry and saga were
    #: filed under it: an attack trial). True behind a gateway that sets the header itself
    #: (``saga_kit.tracing.configure``, ``saga_kit.tracing.received``).
    tracing_trust_traceparent: bool = Field(
        default=False,
        validation_alias=AliasChoices("TRACING_TRUST_TRACEPARENT", "tracing_trust_traceparent"),
    )
    #: Fault injection for tests and chaos runs, e.g. ``relay.before_publish``. Never set it
    #: in production.
    fault: str | None = Field(default=None, validation_alias=AliasChoices("SAGA_FAULT", "fault"))

    # -- Kafka transport security (fields: KafkaClientSettings) --------------------------
    def kafka_client_security(self) -> KafkaSecurity:
        """How this service's Kafka clients connect; under ``SAGA_ENV=production`` only an
        encrypted and authenticated connection. Raises ``KafkaSecurityError`` (a
        ``ConfigurationError``: the service does not start) naming what is wrong, a TLS
        file that cannot be used included (``KafkaSecurity.unusable_files``)."""
        return self.usable_kafka_security(production=self.saga_env == "production")

    # ----------------------------------------------------------------------------------

    def token_verifier(self) -> TokenVerifier | None:
        """The verifier of callers' bearer tokens (``saga_kit.auth.load_verifier``): of the
        HTTP API's requests and of commands on Kafka alike. None: authentication is off
        (development without keys); raises ``AuthConfigurationError`` where unfit."""
        return load_verifier(
            self.auth_jwks_file,
            self.auth_jwks_url,
            self.auth_issuer,
            self.auth_audience,
            production=self.saga_env == "production",
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_initial_seconds, self.retry_max_seconds, self.retry_jitter_seconds)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        return async_postgres_url(url)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, servers: str) -> str:
        return kafka_bootstrap(servers)

    @field_validator("auth_jwks_url")
    @classmethod
    def _jwks_url(cls, url: str | None) -> str | None:
        return None if url is None else http_url(url)

    @field_validator("fault")
    @classmethod
    def _known_fault(cls, fault: str | None) -> str | None:
        """A misspelt fault point would inject nothing, silently (an operator trial)."""
        if fault and not fault_injection.known(fault):
            raise ValueError(f"names no fault: one of {', '.join(fault_injection.POINTS)}")
        return fault or None

    @model_validator(mode="after")
    def _idle_wait_within_busy_wait(self) -> ServiceSettings:
        """An idle wait longer than the busy one would make an idle saga slower, not faster
        (an attack run found 2000 ms accepted silently: idle sagas of ~1.8 s)."""
        idle, busy = self.kafka_fetch_idle_wait_ms, self.kafka_fetch_max_wait_ms
        if idle is not None and idle > busy:
            raise ValueError("KAFKA_FETCH_IDLE_WAIT_MS must not exceed KAFKA_FETCH_MAX_WAIT_MS")
        return self

    @model_validator(mode="after")
    def _no_fault_injection_in_production(self) -> ServiceSettings:
        """``SAGA_FAULT`` makes a service SIGKILL itself at a named point, for tests and
        chaos runs (saga_kit.fault_injection): production refuses to start with it."""
        if self.saga_env == "production" and self.fault:
            raise ValueError("SAGA_FAULT is for tests and chaos runs: SAGA_ENV=production refuses it")
        return self


def async_postgres_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and pin the psycopg 3 async driver. Raises
    ``ValueError`` (never quoting the URL: it may hold a password) for another scheme, or
    a URL SQLAlchemy cannot read, such as a port that is no number (an operator trial: it
    was accepted, and the service then stopped on a traceback naming no variable)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            pinned = "postgresql+psycopg://" + url[len(prefix) :]
            try:
                port = make_url(pinned).port
                if port is not None and not 1 <= port <= 65535:
                    raise ValueError(port)
            except (ValueError, ArgumentError):
                raise ValueError(
                    "is not a URL SQLAlchemy can read (postgresql://user:password@host:port/database;"
                    " the port a number from 1 to 65535)"
                ) from None
            return pinned
    raise ValueError("must be a postgresql:// URL")


_S = TypeVar("_S")
_log = logging.getLogger(__name__)


def settings_errors(exc: ValidationError, settings: object = None) -> str:
    """What is wrong with the settings, one ``where: why`` per error, without the values.
    ``where`` is the environment variable when ``settings`` (the settings class) says
    which: its ``env_prefix`` and the field's name, e.g. ``ORDER_DATABASE_URL``."""

    def where(loc: tuple[int | str, ...]) -> str:
        fields = getattr(settings, "model_fields", {})
        config = getattr(settings, "model_config", {})
        first, rest = loc[0], loc[1:]
        field = fields.get(first) if isinstance(first, str) else None
        if field is not None and field.validation_alias is None:
            first = f"{config.get('env_prefix', '')}{first}".upper()
        return ".".join(map(str, (first, *rest)))

    said = error_words  # a validator's own words, without pydantic's "Value error, "
    return "; ".join(f"{where(e['loc'])}: {said(e)}" if e["loc"] else said(e) for e in exc.errors())


def load_or_exit(name: str, factory: Callable[[], _S]) -> _S:
    """The settings ``factory`` reads from the environment; if they do not validate, one
    log line naming each variable and what is wrong with it (never its value: it may be a
    secret) and ``SystemExit(2)``, the exit code of a configuration error, before anything
    starts."""
    try:
        return factory()
    except ValidationError as exc:
        logs.configure(name)
        _log.error("%s cannot start: %s", name, settings_errors(exc, factory))
        raise SystemExit(2) from None
