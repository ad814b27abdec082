"""Payment service errors. A card the provider declines is answered with
PaymentFailed (see ``worker.py``), not raised."""

from saga_kit.errors import DomainRejection, InvalidEvent, TransientError

__all__ = ["DomainRejection", "InvalidEvent", "TransientError"]
