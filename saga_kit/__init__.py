"""Plumbing shared by all three services, written once.

``settings`` (one pydantic Settings base), ``db`` (engine + unit of work), ``migrations``,
``outbox`` (transactional outbox + relay), ``inbox`` (idempotent consumer record),
``consumer`` (decode → dedupe → handle → commit, or dead-letter), ``kafka`` (topics,
producer), ``http`` (health endpoints), ``service`` (the composition root runner).
"""
