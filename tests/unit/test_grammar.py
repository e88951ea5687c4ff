"""One token grammar (routes.grammar) read the same way by every place that checks a token."""

from __future__ import annotations

import pytest

from gateway.core.errors import ConfigError
from gateway.core.settings import load_settings
from gateway.http.framing import HeadLimits, Refusal, check_head
from gateway.http.http1 import parse_head
from gateway.policy.retry import IDEMPOTENT_METHODS as RETRY_IDEMPOTENT
from gateway.telemetry.export import parse_headers
from routes.grammar import IDEMPOTENT_METHODS, TOKEN_BYTES_RE, TOKEN_RE

TOKENS = ["x", "X-User-Id", "a!#$%&'*+-.^_`|~9", "GET"]
NOT_TOKENS = ["", "a b", "a:b", "a\n", "\na", "(x)", 'x"', "a\tb", "é", "a/b", "a@b", "a\r"]


@pytest.mark.parametrize("text", TOKENS)
def test_tokens_are_accepted_everywhere(text: str) -> None:
    assert TOKEN_RE.match(text)
    assert TOKEN_BYTES_RE.fullmatch(text.encode())
    assert load_settings(None, {"PEEL_DEADLINES_HEADER": text}).deadlines.header == text
    assert parse_headers(f"{text}=v") == {text.lower(): "v"}
    check_head(f"GET / HTTP/1.1\r\nHost: h\r\n{text}: v\r\n\r\n".encode(), HeadLimits())  # no Refusal
    assert (text.lower().encode(), b"v") in parse_head(f"HTTP/1.1 200 OK\r\n{text}: v".encode()).headers


@pytest.mark.parametrize("text", NOT_TOKENS)
def test_non_tokens_are_refused_everywhere(text: str) -> None:
    # `$` would let "a\n" through a `match`: the shared pattern is anchored with \Z.
    assert not TOKEN_RE.match(text)
    assert not TOKEN_BYTES_RE.fullmatch(text.encode())
    with pytest.raises(ConfigError):
        load_settings(None, {"PEEL_DEADLINES_HEADER": text})
    if text.strip() != text:
        return  # OTel header lists and header lines trim white space around a name first
    assert parse_headers(f"{text}=v") == {}
    if ":" not in text:  # else the name ends at the colon
        with pytest.raises(Refusal):
            check_head(f"GET / HTTP/1.1\r\nHost: h\r\n{text}: v\r\n\r\n".encode(), HeadLimits())


def test_one_list_of_idempotent_methods() -> None:
    assert RETRY_IDEMPOTENT is IDEMPOTENT_METHODS
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} == IDEMPOTENT_METHODS
