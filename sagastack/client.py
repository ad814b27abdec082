"""A small synchronous client for the three HTTP APIs (demo, tests, tools)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx

TERMINAL = {"APPROVED", "REJECTED", "CANCELLED"}


class ApiError(RuntimeError):
    pass


class SagaClient:
    def __init__(
        self, order_url: str, inventory_url: str, payment_url: str, token: str | None = None
    ) -> None:
        """``token``: the bearer token every request carries (saga_kit.auth)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(timeout=10.0, headers=headers)
        self.order_url, self.inventory_url, self.payment_url = order_url, inventory_url, payment_url

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json()

    def put_product(self, product_id: str, name: str, price: Decimal | str, stock: int) -> Any:
        body = {"name": name, "price": str(price), "stock": stock}
        return self._json(self.http.put(f"{self.inventory_url}/products/{product_id}", json=body))

    def product(self, product_id: str) -> Any:
        return self._json(self.http.get(f"{self.inventory_url}/products/{product_id}"))

    def put_account(self, customer_id: str, balance: Decimal | str) -> Any:
        body = {"balance": str(balance)}
        return self._json(self.http.put(f"{self.payment_url}/accounts/{customer_id}", json=body))

    def account(self, customer_id: str) -> Any:
        return self._json(self.http.get(f"{self.payment_url}/accounts/{customer_id}"))

    def place_order(
        self,
        customer_id: str,
        items: dict[str, int],
        idempotency_key: str | None = None,
        deadline_seconds: float | None = None,
        email: str | None = None,
        shipping_address: str | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "items": [{"product_id": p, "quantity": q} for p, q in items.items()],
        }
        if deadline_seconds is not None:
            body["deadline_seconds"] = deadline_seconds
        if email is not None:
            body["email"] = email
        if shipping_address is not None:
            body["shipping_address"] = shipping_address
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        order_id: str = self._json(self.http.post(f"{self.order_url}/orders", json=body, headers=headers))[
            "order_id"
        ]
        return order_id

    def forget(self, customer_id: str) -> Any:
        """Crypto-shred the customer's personal data (operator)."""
        return self._json(self.http.post(f"{self.order_url}/customers/{customer_id}/forget"))

    def cancel(self, order_id: str) -> Any:
        return self._json(self.http.post(f"{self.order_url}/orders/{order_id}/cancel"))

    def orders(self, status: str | None = None, limit: int = 100) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._json(self.http.get(f"{self.order_url}/orders", params=params))

    def order(self, order_id: str) -> Any:
        return self._json(self.http.get(f"{self.order_url}/orders/{order_id}"))

    def saga(self, order_id: str) -> Any:
        return self._json(self.http.get(f"{self.order_url}/orders/{order_id}/saga"))

    def wait_for_events(self, order_id: str, event_types: set[str], timeout: float = 30.0) -> Any:
        """Wait until the order is terminal and its timeline holds ``event_types``."""
        end = time.monotonic() + timeout
        while True:
            saga = self.saga(order_id)
            seen = {e["event_type"] for e in saga["events"]}
            if saga["status"] in TERMINAL and event_types <= seen:
                return saga
            if time.monotonic() > end:
                raise TimeoutError(
                    f"order {order_id}: status {saga['status']}, events {sorted(seen)};"
                    f" waited for {sorted(event_types - seen)}"
                )
            time.sleep(0.05)
