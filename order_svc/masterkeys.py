"""The rewrap job: rotating the master key of personal data (saga_kit.personal_data).

Started with a new ``ORDER_PII_MASTER_KEY_FILE`` and the old key in
``ORDER_PII_PREVIOUS_MASTER_KEY_FILES``, the service wraps every customer's data key again
with the new key, as it starts and then every ``ORDER_PII_REWRAP_INTERVAL_SECONDS``, and
says in its log how far it is:

* ``rewrapped N data keys with master key K`` after a run that did some;
* ``no live data key is wrapped with a previous master key …`` once, when the previous
  keys may be removed from the setting and destroyed;
* a WARNING naming each master key that still wraps live data keys the service cannot
  unwrap (their customers' personal data cannot be read until it is given), and one for
  rows altered (they do not unwrap with the key they name), whenever those counts change.
  A row altered under the master key itself is not walked: it is found when it is used
  (an ERROR naming the order or the customer).

With ``ORDER_PII_REWRAP=false`` the job does nothing: the first step of a rotation across
several instances, where every instance is given the new key as a previous key before any
wraps with it (instances that rewrapped both ways would undo each other's work).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from saga_kit.db import Database
from saga_kit.periodic import Periodic
from saga_kit.personal_data import KeyStore

log = logging.getLogger(__name__)

#: Set as the service is configured: the first run follows at once, not after an interval.
WAKE = asyncio.Event()

_said: dict[str, Any] = {"cannot": {"unknown": {}, "altered": {}}, "previous_done": False}


async def rewrap_data_keys(db: Database, settings: Any) -> int:
    """One run of the job: how many data keys were wrapped again with the master key (0
    without a master key: nothing is sealed then)."""
    keystore: KeyStore | None = settings.keystore
    if keystore is None or not settings.pii_rewrap:
        return 0
    result = await keystore.rewrap(db)
    if result.rewrapped:
        log.info("rewrapped %d data keys with master key %s", result.rewrapped, keystore.current.key_id)
    cannot = {"unknown": result.unknown, "altered": result.altered}
    if cannot != _said["cannot"]:
        _said["cannot"] = cannot
        if result.unknown:
            log.warning(
                "live data keys under a master key this service does not have, by master key: %s —"
                " their customers' personal data cannot be read or sealed (503) until that key is"
                " given in ORDER_PII_PREVIOUS_MASTER_KEY_FILES",
                ", ".join(f"{key_id}: {n}" for key_id, n in sorted(result.unknown.items())),
            )
        if result.altered:
            log.warning(
                "live data keys that do not unwrap with the master key their rows name, by master"
                " key: %s — the rows were altered: restore them from a backup (their orders'"
                " personal data reads as unreadable, their customers' new orders with personal"
                " data are refused 503)",
                ", ".join(f"{key_id}: {n}" for key_id, n in sorted(result.altered.items())),
            )
    previous = [k.key_id for k in keystore.previous]
    if previous and not set(previous) & set(result.altered) and not _said["previous_done"]:
        _said["previous_done"] = True
        log.info(
            "no live data key is wrapped with a previous master key (%s): they may be removed"
            " from ORDER_PII_PREVIOUS_MASTER_KEY_FILES and destroyed",
            ", ".join(previous),
        )
    return result.rewrapped


REWRAP = Periodic("pii_rewrap", lambda s: s.pii_rewrap_interval_seconds, rewrap_data_keys, wake=WAKE)
