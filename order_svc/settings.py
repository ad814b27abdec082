from pydantic_settings import SettingsConfigDict

from saga_kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """``ORDER_DATABASE_URL``, ``ORDER_HTTP_PORT`` (8001), ``ORDER_HTTP_HOST``, …"""

    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", frozen=True)

    http_port: int = 8001
