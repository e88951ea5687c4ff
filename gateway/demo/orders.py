"""The sample new `orders` service: what the demo peels `/orders` off the monolith onto.

    python -m gateway.demo.orders --port 8082

Same JSON shapes as the monolith's `/orders`, plus `"served_by": "orders-service"` in every body and
`X-Served-By: orders-service` on every response.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.demo.shop import OrderBook, OrderEndpoints, ServedBy, health, run_app

SERVED_BY = "orders-service"
DEFAULT_PORT = 8082


def build_app() -> Starlette:
    """A fresh orders service with its own seeded order book."""
    orders = OrderEndpoints(OrderBook.seeded(), extra={"served_by": SERVED_BY})
    return Starlette(
        routes=[Route("/orders", orders.list, methods=["GET"]),
                Route("/orders", orders.create, methods=["POST"]),
                Route("/orders/{order_id}", orders.get, methods=["GET"]),
                Route("/health", health, methods=["GET"])],
        middleware=[Middleware(ServedBy, name=SERVED_BY)])


app = build_app()

if __name__ == "__main__":
    run_app(app, "gateway.demo.orders", DEFAULT_PORT)
