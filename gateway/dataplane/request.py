"""One downstream request in the data plane: its state, and the answers Peel makes itself.

`RequestState` is what the proxy knows about a request and what became of it (the access log, the
metrics and the trace read it at the end); `send_problem` answers it with a problem+json;
`abort_downstream` cuts a response that has already started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.core import problems
from gateway.core.asgi import RESPOND, Downstream, Receive, Respond, Scope, Send
from gateway.upstream.pool import ExchangeAborted

if TYPE_CHECKING:
    from facade.decision import Side
    from gateway.dataplane.buffering import BufferedBody
    from gateway.telemetry.tracing import RequestTrace
    from routes.model import Endpoint
    from routes.table import CompiledRoute



class BodyTooLarge(Exception):
    """A request body passed its route's `max_body` while it streamed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this route takes request bodies of at most {limit} bytes")


class RequestState:
    """One downstream request on its way through the data plane: what it is and what became of it.

    The first group is set by the proxy before forwarding; the second is filled in as the request
    goes and ends up in the access log, the metrics and the trace.
    """

    __slots__ = ("attempts", "baggage", "body", "bytes_in", "bytes_out", "chunked", "client", "cohort",
                 "compiled", "deadline",
                 "detail", "endpoint", "error", "fallback", "has_body", "host_header", "length", "method",
                 "path", "query", "receive", "request_id", "respond", "response_headers", "route",
                 "scope", "send", "sent", "service", "side", "started", "status", "trace", "upstream")

    def __init__(self, request_id: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        self.request_id = request_id
        self.scope = scope
        self.receive = receive
        self.send = send
        # The edge's one-call answer, only while `send` is the edge's own: an ASGI wrapper that
        # changes responses (HSTS, a recording `send`) sees messages only. None: send messages.
        respond: Respond | None = (scope.get("extensions") or {}).get(RESPOND)
        if respond is not None and getattr(send, "__self__", None) is not getattr(respond, "__self__", ()):
            respond = None
        self.respond = respond
        self.method: str = scope["method"]
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.compiled: CompiledRoute | None = None
        self.host_header: bytes | None = None
        self.path = ""
        self.query = b""
        self.length: bytes | None = None
        self.chunked = False
        self.has_body = False
        # the body read ahead (buffering, retries, fallback): each attempt reads it from the start
        self.body: BufferedBody | None = None
        self.deadline: float | None = None  # time.monotonic() by which the answer must be complete
        self.trace: RequestTrace | None = None
        # the outgoing `baggage` is rewritten with this side of a migration (facade.cohort)
        self.baggage = False
        self.cohort: Side | None = None
        # extra headers for the downstream response (the route's rate-limit state)
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        # -- outcome
        self.route: str | None = None
        self.service: str | None = None
        self.side: str | None = None  # "from" or "to" on a migrated route
        self.fallback: str | None = None  # the `to` failure that `from` answered for
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream: float | None = None
        self.error: str | None = None
        self.detail: str | None = None  # what went wrong, in the operator's words (not the client's)
        self.started = False  # the response head went downstream
        self.sent = False  # the request went upstream completely

    @property
    def replayable(self) -> bool:
        """The whole body is held: another attempt (a retry, `from`) can send it again."""
        return self.body is not None and self.body.complete


async def send_problem(req: RequestState, status: int, code: str, detail: str, *,
                       close: bool = False, headers: list[tuple[bytes, bytes]] | None = None,
                       rid_name: bytes = b"x-request-id") -> None:
    """Answer `req` with a problem+json; `close`: and end the connection (its body was not read)."""
    req.status = status
    req.error = req.error or code
    public = problems.public_detail(code, detail)
    if public is not detail:
        req.detail = detail  # the specifics, for the access log only
    extra = [(rid_name, req.request_id), *headers] if headers else [(rid_name, req.request_id)]
    out, body = problems.render(status, code, public, headers=extra, close=close,
                                request_id=req.request_id.decode("ascii"))
    req.started = True
    req.bytes_out = len(body)
    if req.respond is not None and req.respond(status, out, body):
        return
    await req.send({"type": "http.response.start", "status": status, "headers": out})
    await req.send({"type": "http.response.body", "body": body, "more_body": False})


def abort_downstream(scope: Scope) -> None:
    """Cut the downstream connection (a response that started cannot be turned into an error)."""
    downstream = (scope.get("extensions") or {}).get("peel.downstream")
    if isinstance(downstream, Downstream):
        downstream.abort()
    else:
        # Without Peel's protocol, raising makes the server close the connection.
        raise ExchangeAborted("response cut short") from None
