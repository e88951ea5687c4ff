"""End-to-end deadlines: read the caller's remaining time, pass what is left upstream (pure).

A request may say how long its caller will still wait, in `Peel-Timeout-Ms` (the name is
`deadlines.header`): the remaining milliseconds, a non-negative integer. gRPC's `grpc-timeout`
(1 to 8 ASCII digits and a unit: H M S m u n) is read too when `deadlines.grpc_timeout` is on. The
deadline caps the route's total timeout, and each attempt upstream carries the time then left, so
a chain of services shares one deadline (`docs/deadlines.md`).

A deadline steers Peel (an expired one is answered 504 without contacting the upstream), so it is
believed only from `deadlines.trusted_networks`; from anyone else the headers are ignored and
stripped before forwarding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from gateway.core.settings import DeadlineSettings
from gateway.core.trust import TrustedNetworks

Headers = list[tuple[bytes, bytes]]

GRPC_TIMEOUT: Final = b"grpc-timeout"
# gRPC over HTTP/2, "Requests": TimeoutUnit -> seconds
GRPC_UNITS: Final = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6,
              ord("n"): 1e-9}
GRPC_MAX_DIGITS: Final = 8
_GRPC_MAX: Final = 99_999_999
# More digits than this (over 30,000 years) is not a deadline anyone means; refusing it also keeps
# a 60 KiB run of digits from being parsed at all.
MAX_MS_DIGITS: Final = 15
# A nanosecond, in milliseconds: 16.089 s is 16088.999... ms in floats, and rounding that down
# would take a millisecond off the deadline at every hop.
_FLOAT_NOISE_MS: Final = 1e-6
# Less than this left and a deadline has passed: what goes upstream is whole milliseconds, and
# `Peel-Timeout-Ms: 0` / `grpc-timeout: 0m` would hand the next hop a request its caller has given
# up on (Peel refuses that value on arrival itself).
MIN_REMAINING: Final = 0.001


def expired(deadline: float, now: float) -> bool:
    """Whether `deadline` has passed at `now` (less than `MIN_REMAINING` left)."""
    return deadline - now < MIN_REMAINING


def parse_ms(value: bytes) -> float:
    """Seconds from a remaining-milliseconds value; ValueError with the reason when malformed."""
    text = value.strip()
    if not text.isdigit():
        raise ValueError(f"{value[:40]!r} is not a number of milliseconds (digits only)")
    if len(text) > MAX_MS_DIGITS:
        raise ValueError(f"{len(text)} digits of milliseconds is more than {MAX_MS_DIGITS}")
    return int(text) / 1000.0


def parse_grpc_timeout(value: bytes) -> float:
    """Seconds from a `grpc-timeout` value; ValueError with the reason when malformed."""
    text = value.strip()
    digits, unit = text[:-1], text[-1:]
    if not unit or unit[0] not in GRPC_UNITS:
        raise ValueError(f"grpc-timeout {value[:40]!r} does not end in a unit (H M S m u n)")
    if not digits.isdigit() or len(digits) > GRPC_MAX_DIGITS:
        raise ValueError(f"grpc-timeout {value[:40]!r} is not 1 to {GRPC_MAX_DIGITS} digits and a unit")
    return int(digits) * GRPC_UNITS[unit[0]]


def whole_ms(seconds: float) -> int:
    """`seconds` in whole milliseconds, rounded down, never negative.

    Rounded down after allowing for float noise (a nanosecond, or two units in the last place of
    large values), so that whole milliseconds read by `parse_ms` come back unchanged.
    """
    ms = seconds * 1000.0
    return max(int(ms + _FLOAT_NOISE_MS + ms * 4e-16), 0)


def format_grpc_timeout(seconds: float) -> bytes:
    """A `grpc-timeout` value for `seconds`: milliseconds, in a coarser unit only when the
    milliseconds would take more than 8 digits. Always rounded down, never past the deadline."""
    ms = whole_ms(seconds)
    if ms <= _GRPC_MAX:
        return b"%dm" % ms
    whole = ms // 1000
    if whole <= _GRPC_MAX:
        return b"%dS" % whole
    if whole // 60 <= _GRPC_MAX:
        return b"%dM" % (whole // 60)
    return b"%dH" % min(whole // 3600, _GRPC_MAX)


def effective_deadline(incoming: float | None, total: float | None, now: float) -> float | None:
    """The request's deadline: the incoming one or `now + total` (the route's total timeout),
    whichever comes first; None when there is neither."""
    if total is None:
        return incoming
    own = now + total
    return own if incoming is None or own < incoming else incoming


class DeadlineRules:
    """The `[deadlines]` settings, compiled once: which header, whom to believe, what to send on.

    `read`, `strip` and `outgoing` are on the request path: the trusted networks are parsed here
    and every client address's verdict is cached.
    """

    __slots__ = ("_grpc", "_name", "header", "names", "trusts")

    trusts: Callable[[str | None], bool]

    def __init__(self, settings: DeadlineSettings) -> None:
        self.header = settings.header
        self._name = settings.header.lower().encode("ascii")
        self._grpc = settings.grpc_timeout
        # the header names (lower-case) that carry a deadline: the proxy spots them while it reads
        # the request's headers once
        self.names = frozenset({self._name, GRPC_TIMEOUT} if self._grpc else {self._name})
        # Whether the downstream peer at `client` may set a deadline (no networks: nobody may).
        self.trusts = TrustedNetworks(settings.trusted_networks).contains

    def read(self, headers: Iterable[tuple[bytes, bytes]], client: str | None, now: float, *,
             trusted: bool = False) -> float | None:
        """The absolute deadline (on the clock `now` is from) the request carries, or None.

        None when the client is not trusted (`trusted`: whatever its address) or sent no deadline
        header. When several values are present (both headers, or one twice) the earliest deadline
        wins: a caller can only be waiting for the shortest. A malformed value from a trusted
        client raises ValueError with the reason (the proxy answers 400 `bad-deadline`).
        """
        if not trusted and not self.trusts(client):
            return None
        shortest: float | None = None
        for name, value in headers:
            if name == self._name:
                try:
                    seconds = parse_ms(value)
                except ValueError as exc:
                    raise ValueError(f"{self.header}: {exc}") from None
            elif name == GRPC_TIMEOUT and self._grpc:
                seconds = parse_grpc_timeout(value)
            else:
                continue
            if shortest is None or seconds < shortest:
                shortest = seconds
        return None if shortest is None else now + shortest

    def strip(self, headers: Headers) -> Headers:
        """`headers` without the deadline headers (the same list when it has none).

        For an untrusted client's request, and before `outgoing` adds the remaining time.
        """
        names = self.names
        for name, _ in headers:
            if name in names:
                return [pair for pair in headers if pair[0] not in names]
        return headers

    def outgoing(self, remaining: float) -> Headers:
        """The deadline headers of an upstream attempt with `remaining` seconds left: whole
        milliseconds rounded down, and `grpc-timeout` when it is read too.

        `remaining` is at least `MIN_REMAINING` (less is an expired deadline: nothing is sent); a
        smaller value raises ValueError rather than forward a budget of 0.
        """
        if remaining < MIN_REMAINING:
            raise ValueError(f"{remaining:.6f} s left: the deadline has passed")
        out = [(self._name, b"%d" % whole_ms(remaining))]
        if self._grpc:
            out.append((GRPC_TIMEOUT, format_grpc_timeout(remaining)))
        return out
