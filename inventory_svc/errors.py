"""Inventory service errors. Out-of-stock and unknown products are not errors here: they
are answered with InventoryReservationFailed (see ``reservation.py``)."""

from saga_kit.errors import DomainRejection, InvalidEvent, TransientError

__all__ = ["DomainRejection", "InvalidEvent", "TransientError"]
