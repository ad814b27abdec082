"""Composition root of the payment service."""

from events.topics import INVENTORY, ORDERS
from payment_svc import api, runtime
from payment_svc.handlers import reactions
from payment_svc.schema import MIGRATIONS
from saga_kit.consumer import Subscription
from saga_kit.periodic import Periodic
from saga_kit.service import ServiceSpec

SPEC = ServiceSpec(
    name="payment_svc",
    title="payment_svc — charges and refunds through the payment provider",
    migrations=MIGRATIONS,
    subscription=Subscription(topics=(INVENTORY, ORDERS), reactions=reactions),
    routers=lambda: [api.router],
    configure=runtime.configure,
    close=runtime.close,
    periodic=(
        Periodic(
            "payment_worker",
            lambda s: s.provider_poll_seconds,
            runtime.work,
            wake=runtime.WORK_DUE,
            grace=runtime.finish_grace,
            stop=runtime.finish,
            after_catch_up=True,
        ),
    ),
    metrics=runtime.render,
    checks={"payment_provider": runtime.provider_check},
)
