"""Order service errors. Transient and invalid-event types are the shared ones."""

from saga_kit.errors import DomainRejection, InvalidEvent, TransientError

__all__ = ["DomainRejection", "IdempotencyKeyReused", "InvalidEvent", "TransientError"]


class IdempotencyKeyReused(DomainRejection):
    def __init__(self) -> None:
        super().__init__(
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request body",
        )


class OrderNotCancellable(DomainRejection):
    def __init__(self, status: str) -> None:
        super().__init__(
            "order_not_cancellable",
            f"the order is {status}: only a PENDING or APPROVED order can be cancelled",
        )
        self.status = status
