"""A card processor, simulated: the external system the payment service charges.

An HTTP service with its own ledger in its own PostgreSQL database (accounts, charges,
refunds), that behaves like a real card processor: every charge and refund is keyed by
the client's ``Idempotency-Key`` and happens at most once whatever is retried, and a
replay answers what the first request was answered. Fault controls (latency, errors,
timeouts, outages, lost responses) let tests and chaos runs make it misbehave the way
real processors do. ``sagastack`` starts it beside the services; production points the
payment service at a real provider by URL instead.

Modules: ``models`` (the wire contract), ``ledger`` (the transactions), ``faults`` (fault
injection), ``api`` (routes), ``app`` (composition root and server), ``schema`` (tables),
``settings``. The contract is in the README ("Payment provider (simulator)")."""
