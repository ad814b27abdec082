"""Order service errors. Transient and invalid-event types are the shared ones."""

from saga_kit.errors import DomainRejection, InvalidEvent, TransientError

__all__ = ["DomainRejection", "IdempotencyKeyReused", "InvalidEvent", "TransientError"]


class IdempotencyKeyReused(DomainRejection):
    def __init__(self) -> None:
        super().__init__(
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )
