from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from saga_kit.settings import ServiceSettings
from saga_kit.urls import base_url


class Settings(ServiceSettings):
    """``PAYMENT_DATABASE_URL``, ``PAYMENT_HTTP_PORT`` (8003), ``PAYMENT_PROVIDER_URL``, …"""

    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8003, ge=0, le=65535)

    provider_url: str = Field(
        default="http://127.0.0.1:8004",
        description="base URL of the payment provider (charges, refunds, accounts); the"
        " simulator in payment_provider/ by default, a real processor in production",
    )
    provider_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="each provider call's whole budget (connect, send, wait, read); past it"
        " the outcome is unknown and the call is repeated later with the same idempotency key",
    )
    provider_breaker_failures: int = Field(
        default=5, ge=1, description="consecutive failed provider calls that open the circuit breaker"
    )
    provider_breaker_recovery_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how long the open breaker fails fast before it half-opens to let one probe through",
    )
    provider_poll_seconds: float = Field(
        default=0.25,
        gt=0,
        description="how often the payment worker looks for retries coming due; a new charge or refund"
        " wakes it at once (a commit that made one)",
    )
    provider_batch: int = Field(
        default=64,
        ge=1,
        description="payments the worker holds at once, called or waiting for a call slot (and how many"
        " an open breaker says wait in one go); a claim's lease covers calling that many,"
        " PAYMENT_PROVIDER_CONCURRENCY at a time",
    )
    provider_concurrency: int = Field(default=16, ge=1, description="provider calls in flight at once")

    @field_validator("provider_url")
    @classmethod
    def _provider_url(cls, url: str) -> str:
        return base_url(url)
