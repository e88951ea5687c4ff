"""RFC 9457 problem details: the one shape of every error Peel answers with, and the one writer.

Both listeners use it: the data plane for upstream failures (502/503/504 with a Peel error code),
the admin API for refused changes (with the field and the value). `render()` makes the header
block and the body of an answer once, for every transport that sends one: the data plane's HTTP
answers (`gateway.dataplane.request.send_problem`), refused WebSocket handshakes, requests refused
at the edge before any app runs (`gateway.http.framing.refusal_response`, raw bytes), and the
admin's authentication middleware.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from gateway.core.errors import UpstreamError
from routes.errors import RuleError

CONTENT_TYPE: Final = "application/problem+json"
_CONTENT_TYPE: Final = CONTENT_TYPE.encode("ascii")
_TITLES: Final = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 412: "Precondition Failed",
           413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
           422: "Unprocessable Content", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


def problem(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem document. `code` is Peel's stable error code (also the `type` URI's tail)."""
    body: dict[str, Any] = {"type": f"https://peel.dev/problems/{code}",
                            "title": _TITLES.get(status, "Error"), "status": status,
                            "code": code, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()


# What a client is told about failures whose own text names the gateway's insides (endpoint URLs,
# TLS errors, exception classes): the specifics stay in the log and the access-log line (`detail`).
PUBLIC_DETAILS: Final = {
    "upstream-error": "the upstream service failed",
    "no-endpoint": "the service has no endpoint available",
    "circuit-open": "the service is refusing requests for a moment (circuit open); try again later",
    "upstream-connect-failed": "the upstream service could not be reached",
    "upstream-timeout": "the upstream service did not answer in time",
    "deadline-exceeded": "the request's deadline passed before an answer",
    "upstream-protocol-error": "the upstream service answered something that is not HTTP/1.1",
    "upstream-reset": "the upstream service closed the connection before answering",
    "upstream-tls-failed": "a secure connection to the upstream service could not be established",
    "upstream-tls-config": "the gateway cannot use its TLS settings for the upstream service",
    "internal-error": "the gateway failed on this request",
}


def public_detail(code: str, detail: str) -> str:
    """The detail a downstream client may see for `code`: generic for upstream and internal
    failures (any `upstream-*` code included), the given one for refusals of the request itself."""
    public = PUBLIC_DETAILS.get(code)
    if public is None and code.startswith("upstream-"):
        public = PUBLIC_DETAILS["upstream-error"]
    return detail if public is None else public


def render(status: int, code: str, detail: str, *, headers: Iterable[tuple[bytes, bytes]] = (),
           close: bool = False, **extra: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of a problem+json answer: content type and length, then `headers`, then
    `Connection: close` when `close`. `extra` members go into the document (request id, field)."""
    body = encode(problem(status, code, detail, **extra))
    out = [(b"content-type", _CONTENT_TYPE), (b"content-length", b"%d" % len(body)), *headers]
    if close:
        out.append((b"connection", b"close"))
    return out, body


def from_rule_error(exc: RuleError) -> dict[str, Any]:
    return problem(exc.status, exc.code, str(exc), field=exc.field, value=exc.value)


def from_upstream_error(exc: UpstreamError, **extra: Any) -> dict[str, Any]:
    return problem(exc.status, exc.code, str(exc) or exc.code, **extra)
