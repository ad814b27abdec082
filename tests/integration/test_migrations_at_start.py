"""A service's schema migrations at start (``saga_kit.service.apply_migrations``), over the
real database: a migration whose connection the server cuts (a database restart while the
service starts; a chaos run saw order_svc exit on it) is tried again, not the end of the
service. All migrations are one transaction, so a cut one left nothing half done."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
from sqlalchemy import text

from saga_kit.db import create_engine
from saga_kit.migrations import _LOCK_KEY, PLUMBING
from saga_kit.retry import RetryPolicy
from saga_kit.service import apply_migrations
from saga_kit.settings import ServiceSettings
from sagastack.embedded import Postgres


async def test_a_migration_cut_off_by_the_server_is_tried_again(postgres: Postgres) -> None:
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin_url = postgres.url("postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(ServiceSettings._async_driver(postgres.url(name)), pool_size=2)
    try:
        with psycopg.connect(postgres.url(name), autocommit=True) as holder:
            # hold the migrations' lock: the service's migration waits on it, in the server
            holder.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            migrating = asyncio.create_task(
                apply_migrations(engine, PLUMBING, RetryPolicy(0.05, 0.2, 0.0), asyncio.Event(), 30.0)
            )
            waiting: list[int] = []
            for _ in range(200):  # its backend, waiting on the lock
                waiting = [
                    pid
                    for (pid,) in holder.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'advisory'",
                        (name,),
                    )
                ]
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the migration never waited on its lock"
            holder.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))  # what a restart does
            await asyncio.sleep(0.3)
            assert not migrating.done(), migrating.exception() if migrating.done() else None
            holder.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        applied = await asyncio.wait_for(migrating, 30)
        assert applied == [f"{m.component}:{m.version:04d}_{m.name}" for m in PLUMBING]
        async with engine.connect() as conn:
            recorded = await conn.scalar(text("SELECT count(*) FROM schema_migrations"))
        assert recorded == len(PLUMBING)
    finally:
        await engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
