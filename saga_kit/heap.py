"""The cyclic garbage collector, set for a long-running service (Python's ``gc`` module).

CPython frees most objects by reference counting; its cyclic collector runs besides, each
time allocations exceed deallocations by a threshold (700 by default for the youngest
generation), and every so often it walks every object the process holds. A service
holds ~180,000 objects once started (its modules, classes, pydantic schemas, faust's and
aiokafka's state), so each full collection walked all of them: in a closed loop of 3,000
orders, the collector's time was 11 to 20% of each service's CPU time, a full collection
~100 ms in the order service (timed with ``gc.callbacks``: docs/benchmark-history.md,
"The garbage collector").

:func:`settle`, once a service has started, collects once, **freezes** what is left (the
start-up heap, with ``gc.freeze``, Python ≥ 3.7: moved to a permanent generation that no
later collection walks; a frozen object is still freed by reference counting, only never
by the cyclic collector) and raises the youngest generation's threshold, so young
collections come ~28 times less often (20,000 against 700). A saga's objects die young by reference
counting; the few cycles (an exception with its traceback, some of asyncio's futures)
wait a little longer for a collection, which costs memory in kilobytes.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: The youngest generation's threshold a service runs with (``GC_GEN0_THRESHOLD``): net
#: allocations of container objects between two young collections. Python's own is 700.
#: At 20,000, in a closed loop, a service's collections after start-up fell from ~35 a
#: second to about one (docs/benchmark-history.md, "The garbage collector").
DEFAULT_GEN0_THRESHOLD = 20_000


def settle(gen0_threshold: int = DEFAULT_GEN0_THRESHOLD) -> None:
    """Collect once, freeze the surviving heap and set the youngest generation's
    threshold to ``gen0_threshold`` (net allocations), keeping Python's other two.

    Call it once the process has started, before its steady work: what is frozen is
    never walked again (``gc.unfreeze`` undoes it). ``gen0_threshold`` 0 leaves the
    collector as Python set it (nothing frozen). Raises ``ValueError`` on a negative
    threshold."""
    if gen0_threshold < 0:
        raise ValueError(f"gen0_threshold must be 0 or more, not {gen0_threshold}")
    if gen0_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
    log.debug(
        "garbage collector: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
