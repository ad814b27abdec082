"""``System.keep_running``'s restarts: at once after a process that ran a while; after
one that exited again as it started, a wait that doubles, up to the maximum."""

from __future__ import annotations

from sagastack.system import RESTART_BACKOFF_MAX_SECONDS, RESTART_QUICK_EXIT_SECONDS, _Restart


def test_quick_exits_wait_twice_as_long_each_time_and_a_long_run_starts_over() -> None:
    restart = _Restart()
    assert restart.delay_after(100.0) == 100.0  # the first exit: at once
    waits = []
    now = 100.0
    for _ in range(8):
        restart.started(now)
        now += 2.0  # exited again 2 s after its start
        due = restart.delay_after(now)
        waits.append(due - now)
        now = due
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert RESTART_BACKOFF_MAX_SECONDS == 30.0
    restart.started(now)
    assert restart.waiting_ready
    now += RESTART_QUICK_EXIT_SECONDS + 1  # ran a while before it exited
    assert restart.delay_after(now) == now
