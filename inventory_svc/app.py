"""Composition root of the inventory service."""

from events.topics import ORDERS, PAYMENT
from inventory_svc import api
from inventory_svc.handlers import reactions
from inventory_svc.schema import MIGRATIONS
from saga_kit.consumer import Subscription
from saga_kit.service import ServiceSpec

SPEC = ServiceSpec(
    name="inventory_svc",
    title="inventory_svc — catalogue, stock and reservations",
    migrations=MIGRATIONS,
    subscription=Subscription(topics=(ORDERS, PAYMENT), reactions=reactions),
    routers=lambda: [api.router],
)
