"""Personal data of an order, and its sealed form: the only form it travels or rests in
(``saga_kit.personal_data`` seals and opens it)."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from events.values import SafeText

#: base64 text (standard alphabet, padded)
_BASE64 = r"^[A-Za-z0-9+/]*={0,2}$"


class PersonalData(BaseModel):
    """What a real shop knows of a customer for an order: both optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: Annotated[EmailStr, Field(max_length=254)] | None = None
    shipping_address: Annotated[SafeText, Field(min_length=1, max_length=500)] | None = None


class Sealed(BaseModel):
    """Personal data sealed with its customer's data key (AES-256-GCM): the key's id, the
    nonce (12 bytes) and the ciphertext with its tag, each base64. Readable only while
    that key exists."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: uuid.UUID
    nonce: Annotated[str, Field(min_length=16, max_length=16, pattern=_BASE64)]
    ciphertext: Annotated[str, Field(min_length=24, max_length=4096, pattern=_BASE64)]
