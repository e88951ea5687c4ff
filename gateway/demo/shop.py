"""What the two sample apps share: the order book, the JSON shapes, the `X-Served-By` stamp, the runner.

The monolith and the orders service answer `/orders` with the same shapes on purpose: peeling the
route off the monolith must not change what a downstream sees, apart from who served it. Each process
keeps its own in-memory book, seeded with the same orders, as two real deployments would each have
their own copy of the data after a migration.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SEED_ORDERS: tuple[dict[str, Any], ...] = (
    {"id": 1, "customer": "ada", "items": [{"sku": "tea-earl-grey", "qty": 2}], "status": "shipped"},
    {"id": 2, "customer": "grace", "items": [{"sku": "coffee-beans", "qty": 1}], "status": "paid"},
    {"id": 3, "customer": "linus", "items": [{"sku": "mug", "qty": 4}, {"sku": "tea-green", "qty": 1}],
     "status": "new"},
)
MAX_ITEMS = 100


class ServedBy:
    """Pure ASGI middleware stamping `X-Served-By` on every response, errors and 404s included.

    Not `BaseHTTPMiddleware`: that one breaks contextvars and buffers nothing we need.
    """

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (b"x-served-by", name.encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, stamped)


class BadOrder(ValueError):
    """A `POST /orders` body that is not an order; the message says which field."""


def parse_new_order(body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """Validate a new order: `{"customer": str, "items": [{"sku": str, "qty": int >= 1}, ...]}`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadOrder(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadOrder("body must be a JSON object")
    customer = data.get("customer")
    if not isinstance(customer, str) or not customer.strip():
        raise BadOrder("customer must be a non-empty string")
    items = data.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise BadOrder(f"items must be a list of 1 to {MAX_ITEMS} items")
    clean: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadOrder(f"items[{i}] must be an object")
        sku, qty = item.get("sku"), item.get("qty", 1)
        if not isinstance(sku, str) or not sku:
            raise BadOrder(f"items[{i}].sku must be a non-empty string")
        if not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
            raise BadOrder(f"items[{i}].qty must be a positive integer")
        clean.append({"sku": sku, "qty": qty})
    return customer.strip(), clean


@dataclass
class OrderBook:
    """The orders of one process, in memory. Thread-safe: uvicorn runs one loop, tests may not."""

    orders: dict[int, dict[str, Any]]

    @classmethod
    def seeded(cls) -> OrderBook:
        return cls({o["id"]: json.loads(json.dumps(o)) for o in SEED_ORDERS})

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.orders[k] for k in sorted(self.orders)]

    def get(self, order_id: int) -> dict[str, Any] | None:
        with self._lock:
            return self.orders.get(order_id)

    def create(self, customer: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            order_id = max(self.orders, default=0) + 1
            order = {"id": order_id, "customer": customer, "items": items, "status": "new"}
            self.orders[order_id] = order
            return order


class OrderEndpoints:
    """`GET /orders`, `GET /orders/{id}`, `POST /orders` over one book; `extra` is merged into bodies."""

    def __init__(self, book: OrderBook, extra: dict[str, Any] | None = None) -> None:
        self.book = book
        self.extra = extra or {}

    async def list(self, request: Request) -> JSONResponse:
        orders = self.book.all()
        return JSONResponse({"orders": orders, "count": len(orders), **self.extra})

    async def get(self, request: Request) -> JSONResponse:
        raw = request.path_params["order_id"]
        order = self.book.get(int(raw)) if raw.isdigit() and len(raw) < 19 else None
        if order is None:
            return JSONResponse({"error": "not found", "detail": f"no order {raw}", **self.extra},
                                status_code=404)
        return JSONResponse({**order, **self.extra})

    async def create(self, request: Request) -> JSONResponse:
        try:
            customer, items = parse_new_order(await request.body())
        except BadOrder as exc:
            return JSONResponse({"error": "bad order", "detail": str(exc), **self.extra},
                                status_code=422)
        order = self.book.create(customer, items)
        return JSONResponse({**order, **self.extra}, status_code=201,
                            headers={"Location": f"/orders/{order['id']}"})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def run_app(app: ASGIApp, prog: str, default_port: int, argv: Sequence[str] | None = None) -> None:
    """`python -m gateway.demo.<app> --port N`: serve `app` with uvicorn until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Run the {prog} sample app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=default_port, help="port (default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)
    # The gateway sets the forwarded headers itself; uvicorn must not rewrite the client address.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, proxy_headers=False,
                server_header=False, timeout_graceful_shutdown=5)
