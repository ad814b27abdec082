from pydantic import Field
from pydantic_settings import SettingsConfigDict

from saga_kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """``INVENTORY_DATABASE_URL``, ``INVENTORY_HTTP_PORT`` (8002), …"""

    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8002, ge=0, le=65535)
