"""Payment service errors. Insufficient funds and unknown accounts are answered with
PaymentFailed (see ``charging.py``), not raised."""

from saga_kit.errors import DomainRejection, InvalidEvent, TransientError

__all__ = ["DomainRejection", "InvalidEvent", "TransientError"]
