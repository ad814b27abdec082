from pydantic_settings import SettingsConfigDict

from saga_kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """``PAYMENT_DATABASE_URL``, ``PAYMENT_HTTP_PORT`` (8003), …"""

    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore", frozen=True)

    http_port: int = 8003
