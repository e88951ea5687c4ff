"""The current route table of this process, replaced whole, read once per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routes.table import RouteTable


class TableHolder:
    """Holds the live `RouteTable`. Assignment is atomic; a request reads `holder.table` once.

    `table` is None until the first table is compiled (from the store or the disk snapshot); the
    data plane answers 503 then, and readiness stays false.
    """

    __slots__ = ("loaded_at", "table")

    def __init__(self) -> None:
        self.table: RouteTable | None = None
        self.loaded_at: float = 0.0
