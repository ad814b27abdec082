"""Composition root of the order service."""

from events.topics import COMMANDS, INVENTORY, PAYMENT
from order_svc import api, dashboard_api, handlers, sagametrics, statuscounts, timeline
from order_svc.admission import Door
from order_svc.cancelling import cancel_overdue
from order_svc.handlers import reactions
from order_svc.masterkeys import REWRAP
from order_svc.schema import MIGRATIONS
from saga_kit.consumer import Subscription
from saga_kit.periodic import Periodic
from saga_kit.service import ServiceSpec

SPEC = ServiceSpec(
    name="order_svc",
    title="order_svc — places orders and keeps every saga's timeline",
    migrations=MIGRATIONS,
    subscription=Subscription(
        topics=(INVENTORY, PAYMENT, COMMANDS),
        reactions=reactions,
        decoders={COMMANDS: handlers.decode_command},
    ),
    configure=handlers.configure,
    routers=lambda: [api.router, dashboard_api.router],
    emit_hooks=(timeline.record,),
    metrics=sagametrics.render,
    outer_middleware=(Door,),
    periodic=(
        Periodic("deadline_sweeper", lambda s: s.deadline_sweep_interval, lambda db, _: cancel_overdue(db)),
        Periodic(
            "status_counts_fold", lambda s: s.status_counts_fold_interval, lambda db, _: statuscounts.fold(db)
        ),
        REWRAP,
    ),
)
