"""The three services' names, in one place: the name each gives itself (``order_svc``, in
its logs, its metrics, its events' ``producer`` and the dashboard) and the short one an
operator types (``order``, sagactl's). Wherever a service is asked for, both name it."""

from __future__ import annotations

from typing import Literal, get_args

#: A service by the name it gives itself.
Service = Literal["order_svc", "inventory_svc", "payment_svc"]
#: A service by either of its names, as a caller may give it (``Service`` and the short ones).
ServiceName = Literal["order", "inventory", "payment", "order_svc", "inventory_svc", "payment_svc"]

SERVICES: tuple[Service, ...] = get_args(Service)


def short_name(service: Service) -> str:
    """``order`` for ``order_svc``: the name an operator types."""
    return service.removesuffix("_svc")


SHORT_NAMES: tuple[str, ...] = tuple(short_name(s) for s in SERVICES)


def service_named(name: str) -> Service:
    """The service ``name`` names: by its own name (``payment_svc``) or its short one
    (``payment``). Raises ``ValueError`` saying which names there are for any other."""
    for service in SERVICES:
        if name in (service, short_name(service)):
            return service
    raise ValueError(f"one of {', '.join(SHORT_NAMES)} (or {', '.join(SERVICES)})")
