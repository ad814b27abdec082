"""Progress bars for the long operations (seeding, placing orders, waiting for sagas),
one look everywhere: demo, bench and chaos. On a terminal they redraw in place; in a log
(CI, a pipe) rich prints only the final state."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


def bar() -> Progress:
    return Progress(
        TextColumn("  {task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
