"""``make screenshots``: run the demo's sagas and photograph the dashboard for docs/.

Writes ``docs/dashboard.png`` (overview, an order cancelled after approval selected:
refund and restock marked) and ``docs/dashboard-rejected.png`` (a saga rejected for lack
of funds: why, and the compensation that released its stock)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sagastack import demo
from sagastack.browser import open_chromium, texts, wait
from sagastack.system import System


def shoot(driver: Any, url: str, order_id: str, path: Path, status: str) -> None:
    driver.get(url)
    wait(driver, lambda d: order_id[:8] in texts(d, "#orders td"), what="order listed")
    driver.execute_script(f"select('{order_id}')")
    wait(driver, lambda d: texts(d, "#saga-status") == [status], what=f"saga {status}")
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main(args: argparse.Namespace) -> int:
    with System(Path(args.run_dir), free_ports=True, fresh=True) as system:
        problems = demo.run_demo(system, n_orders=30)
        if problems:
            print("\n".join(problems))
            return 1
        orders: dict[tuple[str, str | None], str] = {}
        for o in demo_orders(system):  # oldest first: the demo's own scenarios win
            orders.setdefault((o["status"], o["reason"]), o["order_id"])
        driver = open_chromium()
        try:
            url = f"{system.url('order_svc')}/dashboard#token={system.token()}"
            shoot(
                driver,
                url,
                orders[("CANCELLED", "cancelled_by_customer")],
                Path("docs/dashboard.png"),
                "CANCELLED",
            )
            shoot(
                driver,
                url,
                orders[("REJECTED", "insufficient_funds")],
                Path("docs/dashboard-rejected.png"),
                "REJECTED",
            )
        finally:
            driver.quit()
    return 0


def demo_orders(system: System) -> list[Any]:
    client = system.client()
    try:
        return list(reversed(client.orders(limit=1000)))
    finally:
        client.close()


def add_parser(sub: Any) -> None:
    p = sub.add_parser("screenshots", help="photograph the dashboard for docs/")
    p.add_argument("--run-dir", default=".run/screenshots")
    p.set_defaults(func=main)
