"""How the admin API reads requests and writes answers: capped JSON bodies, versions, reasons.

Every answer is JSON; every refusal is RFC 9457 problem+json (`gateway.core.problems`). Reads and writes
carry `ETag: "<config version>"` so a client can send it back as `If-Match` and be refused (412)
when someone else changed the rules in between.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core import problems
from routes.errors import RuleError

# Big enough for a 10k-route document, small enough that one request cannot exhaust memory.
MAX_BODY = 32 * 1024 * 1024
# A document nests about eight levels (routes[].match.headers[].value); 64 leaves room for any
# future field and refuses bodies built to exhaust the parser's or the model's recursion.
MAX_DEPTH = 64
# Bodies larger than this are parsed in a worker thread, not on the event loop (`read_json`).
PARSE_INLINE = 64 * 1024
REASON_HEADER = "peel-reason"
ACTOR_KEY = "peel.actor"


class BadRequest(RuleError):
    """The request itself is malformed (not JSON, a bad header, a bad query parameter)."""

    status = 400
    code = "bad-request"


class BodyTooLarge(RuleError):
    status = 413
    code = "body-too-large"


class JSON(JSONResponse):
    """Compact JSON; datetimes and dataclasses printed the way the API documents them."""

    def render(self, content: Any) -> bytes:
        return encode(plain(content))


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# A list longer than this is encoded this many elements at a time (`encode`).
SPLIT = 256


def encode(value: Any) -> bytes:
    """`value` as compact JSON, the bytes `json.dumps` gives, with every list longer than `SPLIT`
    encoded in slices: one `json.dumps` call holds the GIL until it returns, and over 10,000
    routes that is 10 ms in which an event loop sharing the process (the data plane's) serves
    nothing; between two slices, the interpreter lets it run."""
    return _pieces(value).encode()


def _pieces(value: Any) -> str:
    # Dicts are walked (an answer's envelope, a document's); a long list is encoded `SPLIT`
    # elements a call (about a quarter of a millisecond of routes), each call's brackets dropped.
    # A dict with a key that is not a string is left to json.dumps whole (it spells such keys).
    kind = type(value)
    if kind is dict and all(type(k) is str for k in value):
        return "{" + ",".join(_dumps(k) + ":" + _pieces(v) for k, v in value.items()) + "}"
    if kind is list and len(value) > SPLIT:
        return "[" + ",".join(_dumps(value[i:i + SPLIT])[1:-1]
                              for i in range(0, len(value), SPLIT)) + "]"
    return _dumps(value)


def plain(value: Any) -> Any:
    """Turn store values (frozen dataclasses, datetimes, tuples) into JSON-ready values."""
    kind = type(value)
    # the common cases first, by exact type: a 10,000-route answer is mostly these (the generic
    # checks below cost 3 x the encoding itself)
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return plain(value.to_dict())
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def answer(content: Any, *, version: int | None, status: int = 200) -> Response:
    """A JSON answer; `version` becomes the ETag (the config version the answer reflects)."""
    headers = {"ETag": etag(version)} if version is not None else None
    return JSON(content, status_code=status, headers=headers)


def problem_response(body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(problems.encode(body), status_code=int(body["status"]),
                    media_type=problems.CONTENT_TYPE, headers=dict(headers or {}))


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(request: Request) -> int | None:
    """The config version named by `If-Match: "<version>"` (or None when absent).

    `*` means "whatever is there" and is the same as no header. A weak tag (`W/"3"`) is accepted:
    config versions have no byte-level representation for weak and strong to differ on.
    """
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest("If-Match", 'must be a config version in quotes, like "12"', raw)
    return int(text)


def reason_header(request: Request, default: str) -> str:
    """The `Peel-Reason` header (UTF-8 bytes are allowed); `default` when absent or blank."""
    raw = request.headers.get(REASON_HEADER)
    if raw is None:
        return default
    try:
        # Starlette decodes header bytes as latin-1; a CLI sends UTF-8.
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        text = raw
    return text.strip() or default


def actor(request: Request) -> str:
    """The name of the token that authenticated this request (set by `BearerAuth`)."""
    return str(request.scope[ACTOR_KEY])


async def read_json(request: Request) -> Any:
    """The request body as JSON, refusing bodies over `MAX_BODY` before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge("body", f"is larger than {MAX_BODY} bytes", int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge("body", f"is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) > PARSE_INLINE:
        # A large body (a whole document applied) is parsed off the event loop: checking and
        # parsing 5 MB takes tens of milliseconds that the data plane's requests would wait.
        return await run_in_threadpool(parse_json, data)
    return parse_json(data)


def parse_json(data: bytes) -> Any:
    """A request body as JSON: `BadRequest` (field `body`) when empty, not JSON or too deep."""
    if not data.strip():
        raise BadRequest("body", "is empty; a JSON value is required")
    # Measured on the text, before the parser runs: a RecursionError inside json.loads would be
    # caught, but CPython 3.11.7 can leave its AST recursion accounting wrong after one, and a
    # later compile() in the process then fails with "SystemError: AST constructor recursion
    # depth mismatch" (seen in the test suite). So the parser never meets a body it cannot take.
    if _text_depth_exceeds(data, MAX_DEPTH):
        raise BadRequest("body", f"is nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("body", f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body", f"is nested deeper than {MAX_DEPTH} levels") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise BadRequest("body", f"is nested deeper than {MAX_DEPTH} levels")
    return value


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _text_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text nests `[`/`{` more than `limit` deep (strings left out); linear, in C
    but for one pass over the brackets, and none at all when there are too few to nest that deep."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` deep (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def body_object(data: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a request object's keys: unknown fields are refused, like in the document model."""
    if not isinstance(data, dict):
        raise RuleError("body", "must be a JSON object", type(data).__name__)
    for key in data:
        if key not in allowed:
            raise RuleError(str(key), f"unknown field; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in data:
            raise RuleError(key, "is required")
    return data


def query_int(request: Request, name: str, default: int | None, *, minimum: int = 0) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise BadRequest(name, f"must be an integer of at least {minimum}", raw)
    return int(raw)
