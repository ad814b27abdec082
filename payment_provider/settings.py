"""The provider's settings, from ``PROVIDER_*`` environment variables (nothing is read at
import time: ``python -m payment_provider`` builds them)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from payment_provider.faults import FaultSettings
from saga_kit.heap import DEFAULT_GEN0_THRESHOLD
from saga_kit.settings import async_postgres_url


class Settings(BaseSettings):
    """``PROVIDER_DATABASE_URL`` (its own database), ``PROVIDER_HTTP_HOST`` (127.0.0.1),
    ``PROVIDER_HTTP_PORT`` (8004), ``PROVIDER_HTTP_MAX_BODY_BYTES`` (1 MiB),
    ``PROVIDER_HTTP_BODY_TIMEOUT_SECONDS`` (30),
    ``PROVIDER_FAULT_CONTROL`` (false: the ``/v1/faults`` routes answer 404 and no fault is
    ever injected), ``PROVIDER_FAULTS`` (JSON, the faults in force at start, e.g.
    ``{"latency_ms": 50}``; needs fault control); ``LOG_LEVEL`` and ``GC_GEN0_THRESHOLD``
    unprefixed, as the services read them."""

    model_config = SettingsConfigDict(env_prefix="PROVIDER_", extra="ignore", frozen=True)

    database_url: str = Field(description="PostgreSQL URL of the provider's own database (postgresql://...)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8004, ge=0, le=65535)
    fault_control: bool = False
    faults: FaultSettings | None = None
    #: Kept connections (as many again may open for a burst, and close after it). At least
    #: the payment service's calls in flight (PAYMENT_PROVIDER_CONCURRENCY, 16): with 10,
    #: every round of 16 charges opened and closed 6 backends, which cost PostgreSQL more
    #: CPU than the charges themselves (measured: 248 new sessions per 1,000 sagas).
    db_pool_size: int = Field(default=24, ge=1)
    #: The largest request body read, in bytes (larger: 413 ``body_too_large``, counted as
    #: it arrives); the same default as the services' ``HTTP_MAX_BODY_BYTES``.
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    #: Seconds a request's whole body may take from the route's first read (else 408
    #: ``request_timeout``, the connection closed); the services' ``HTTP_BODY_TIMEOUT_SECONDS``
    #: default. A body that stalled held its connection for ever (an attack trial: 100 s).
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "log_level"))
    #: The young generation's threshold once started (``saga_kit.heap.settle``), read from
    #: ``GC_GEN0_THRESHOLD`` as the services read it; 0 leaves Python's own.
    gc_gen0_threshold: int = Field(
        default=DEFAULT_GEN0_THRESHOLD,
        ge=0,
        validation_alias=AliasChoices("GC_GEN0_THRESHOLD", "gc_gen0_threshold"),
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        return async_postgres_url(url)

    @model_validator(mode="after")
    def _faults_need_control(self) -> Settings:
        if self.faults is not None and not self.fault_control:
            raise ValueError("PROVIDER_FAULTS needs PROVIDER_FAULT_CONTROL=true")
        return self
