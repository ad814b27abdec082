"""Composition root of the payment service."""

from events.topics import INVENTORY, ORDERS
from payment_svc import api
from payment_svc.handlers import reactions
from payment_svc.schema import MIGRATIONS
from saga_kit.consumer import Subscription
from saga_kit.service import ServiceSpec

SPEC = ServiceSpec(
    name="payment_svc",
    title="payment_svc — customer accounts and charges",
    migrations=MIGRATIONS,
    subscription=Subscription(topics=(INVENTORY, ORDERS), reactions=reactions),
    routers=lambda: [api.router],
)
