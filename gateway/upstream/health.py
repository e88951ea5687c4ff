"""Active health checks: one task per endpoint of every service that declares a `health_check`.

    checker = HealthChecker(upstreams, dialer=pool.dialer)
    upstreams.update(table); checker.sync()          # after every table swap, on the event loop
    await checker.close()                            # when the process stops

A check opens a fresh connection (never one of the pool's: a check must see what a new request
would see, and must not hold a keep-alive slot), sends `GET <path>` with `Connection: close` and
reads the status line; the endpoint passed when the status is one of the policy's `statuses`. The
whole check (connect, TLS, request, status line) has `timeout` seconds; an https endpoint is
dialled with its service's `tls` (CA, client certificate, server name) exactly as requests are. The
result goes to `EndpointState.report_check(ok, now)`, which applies the healthy/unhealthy
thresholds; this module only watches `healthy` change to log each transition once.

Checks of one endpoint start at a random offset within the interval, so that a reload or a start of
many workers does not send every check at the same instant, and then run at a fixed rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.core.errors import ConnectError, UpstreamTlsConfig
from gateway.upstream.dial import Dial, Dialer
from routes.model import Endpoint
from routes.policies import HealthCheck

log = logging.getLogger("peel.health")

USER_AGENT = "peel-health"
# A response head larger than this is not a health answer worth reading.
MAX_HEAD = 16 * 1024
# After the status is known, at most this much of the rest is read (so that closing does not reset a
# well-behaved upstream mid-answer); a longer answer is cut.
MAX_DISCARD = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
# What may appear in a request target or a Host value sent on the wire (no controls, no spaces).
_WIRE_SAFE = re.compile(r"[\x21-\x7e]+")


# -- the seams: what the checker needs from gateway.upstream.endpoints (H2) ------------------------

class EndpointHealth(Protocol):
    """The part of `gateway.upstream.endpoints.EndpointState` the checker uses."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def healthy(self) -> bool: ...
    def report_check(self, ok: bool, now: float) -> None: ...


class ServiceHealth(Protocol):
    """The part of `gateway.upstream.endpoints.ServiceState` the checker uses."""

    @property
    def name(self) -> str: ...
    @property
    def health_check(self) -> HealthCheck | None: ...
    @property
    def endpoints(self) -> Collection[EndpointHealth]: ...


class UpstreamRegistry(Protocol):
    """The part of `gateway.upstream.endpoints.Upstreams` the checker uses."""

    @property
    def clock(self) -> Callable[[], float]: ...
    def services(self) -> Sequence[ServiceHealth]: ...


# -- one check ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: `ok`, the status when one was read, else why it failed."""

    ok: bool
    status: int | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        return f"answered {self.status}"


def authority(endpoint: Endpoint) -> str:
    """`host:port` of an endpoint as a Host header value (IPv6 in brackets)."""
    return endpoint.url.split("://", 1)[1]


def check_request(policy: HealthCheck, endpoint: Endpoint) -> bytes:
    """The request head of a check; ValueError when the path or host could not go on the wire."""
    host = policy.host or authority(endpoint)
    if not policy.path.startswith("/") or _WIRE_SAFE.fullmatch(policy.path) is None:
        raise ValueError(f"health check path {policy.path!r} is not a request target")
    if _WIRE_SAFE.fullmatch(host) is None:
        raise ValueError(f"health check host {host!r} is not a Host header value")
    return (f"GET {policy.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def parse_status(head: bytes) -> int:
    """The status code of a response head (its first line); ValueError when it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0]
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(match.group(1))


async def check_endpoint(endpoint: Endpoint, policy: HealthCheck,
                         dialer: Dial | None = None) -> CheckResult:
    """Run one check against `endpoint`, connecting through `dialer` (the pool's, so that a check
    trusts what a request does; None: a default `Dialer`); never raises except for cancellation."""
    try:
        request = check_request(policy, endpoint)
    except ValueError as exc:
        return CheckResult(False, error=str(exc))
    loop = asyncio.get_running_loop()
    # One deadline for the whole check, the bounded read of the rest of the answer included.
    deadline = loop.time() + policy.timeout
    writer: asyncio.StreamWriter | None = None
    polite = False
    try:
        async with asyncio.timeout_at(deadline):
            # asyncio.open_connection's streams, on a connection the dial seam opened
            reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
            transport, protocol = await (dialer or Dialer()).open(
                endpoint, lambda: asyncio.StreamReaderProtocol(reader, loop=loop), timeout=None)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            writer.write(request)
            await writer.drain()
            status, length = await _final_head(reader)
    except TimeoutError:
        return CheckResult(False, error=f"no answer within {policy.timeout:g} s")
    except (asyncio.LimitOverrunError, ValueError) as exc:
        return CheckResult(False, error=f"bad answer: {exc}")
    except asyncio.IncompleteReadError:
        return CheckResult(False, error="closed the connection before a complete response head")
    except UpstreamTlsConfig as exc:
        return CheckResult(False, error=f"TLS configuration: {exc}")
    except ConnectError as exc:
        return CheckResult(False, error=_connect_failure(exc.__cause__ or exc))
    except OSError as exc:
        return CheckResult(False, error=_connect_failure(exc))
    else:
        # The answer is decided; reading a bounded rest lets the upstream finish its write, so that
        # closing does not reset it mid-answer. Whatever happens there does not change the result.
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout_at(deadline):
                polite = await _discard(reader, length)
        return CheckResult(status in policy.statuses, status=status)
    finally:
        if writer is not None:
            # An upstream that did not finish gets no TLS close_notify it would not read anyway.
            if polite:
                writer.close()
            else:
                writer.transport.abort()


def _connect_failure(exc: BaseException) -> str:
    """Why a check could not talk to its endpoint (TLS named as such)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"connection failed: {exc}"


async def _final_head(reader: asyncio.StreamReader) -> tuple[int, int | None]:
    """The status of the final response head, skipping interim 1xx heads (103 Early Hints), and the
    length of its body (None: chunked or delimited by close)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status = parse_status(head)
        if status >= 200 or status == 101:
            return status, body_length(status, head)


def body_length(status: int, head: bytes) -> int | None:
    """The body length a response head announces: 0 for 1xx/204/304, Content-Length, else None."""
    if status < 200 or status in (204, 304):
        return 0
    length: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return length


async def _discard(reader: asyncio.StreamReader, length: int | None) -> bool:
    """Read and drop the rest of an answer (at most MAX_DISCARD bytes); True when all of it came.

    With a known length this ends without waiting for the upstream to close, which matters for
    upstreams that keep the connection open despite `Connection: close`.
    """
    if length is not None:
        if length > MAX_DISCARD:
            return False
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readexactly(length)
        return True
    left = MAX_DISCARD
    while left > 0:
        data = await reader.read(min(left, 16 * 1024))
        if not data:
            return True
        left -= len(data)
    return False


Probe = Callable[[Endpoint, HealthCheck, Dial], Awaitable[CheckResult]]


# -- the checker ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Watch:
    """One running check task and what it was started for (to tell whether to restart it)."""

    policy: HealthCheck
    state: EndpointHealth
    task: asyncio.Task[None]


class HealthChecker:
    """Runs the active checks of every endpoint of every service that has a `health_check`.

    `sync()` reconciles the running tasks with the services of `upstreams`, after each
    `upstreams.update(table)`: tasks start for new endpoints, stop for endpoints and services that
    went away or lost their check, and restart when the policy (or the endpoint's state object)
    changed. A task never raises: an unexpected error in a check is logged and counts as a failed
    check.

    `dialer` is the upstream pool's (`pool.dialer`), so a check trusts what a request does.
    `clock` gives the `now` of `report_check` (default: the clock of `upstreams`); `rand` spreads
    the first checks; `probe` runs one check (tests substitute a scripted one).
    """

    def __init__(self, upstreams: UpstreamRegistry, *, dialer: Dial | None = None,
                 clock: Callable[[], float] | None = None, rand: random.Random | None = None,
                 probe: Probe = check_endpoint) -> None:
        self._upstreams = upstreams
        self._dialer: Dial = dialer if dialer is not None else Dialer()
        self._clock = clock if clock is not None else upstreams.clock
        self._rand = rand or random.Random()
        self._probe = probe
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._closed = False

    def sync(self) -> None:
        """Start, stop and restart check tasks to match the services of `upstreams` now (call on the
        event loop, after `upstreams.update(table)`)."""
        if self._closed:
            return
        wanted: dict[tuple[str, str], tuple[HealthCheck, EndpointHealth]] = {}
        for state in self._upstreams.services():
            policy = state.health_check
            if policy is None:
                continue
            for endpoint_state in state.endpoints:
                wanted[(state.name, endpoint_state.endpoint.url)] = (policy, endpoint_state)
        for key in [k for k, w in self._watches.items()
                    if k not in wanted or wanted[k][0] != w.policy or wanted[k][1] is not w.state]:
            self._watches.pop(key).task.cancel()
        loop = asyncio.get_running_loop()
        for key, (policy, endpoint_state) in wanted.items():
            if key not in self._watches:
                task = loop.create_task(self._run(key[0], endpoint_state, policy),
                                        name=f"health check {key[0]} {key[1]}")
                self._watches[key] = _Watch(policy, endpoint_state, task)

    def watched(self) -> list[tuple[str, str]]:
        """(service, endpoint url) of every running check, sorted."""
        return sorted(self._watches)

    async def close(self) -> None:
        """Stop every check and wait until they are gone."""
        self._closed = True
        tasks = [w.task for w in self._watches.values()]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, service: str, state: EndpointHealth, policy: HealthCheck) -> None:
        loop = asyncio.get_running_loop()
        interval = max(policy.interval, 0.001)
        due = loop.time() + self._rand.uniform(0.0, interval)
        crashed: str | None = None
        run = [0, 0]  # checks passed, failed in a row (for the transition messages)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                result = await self._probe(state.endpoint, policy, self._dialer)
                crashed = None
            except Exception as exc:  # a bug in a check must not stop the checks
                if repr(exc) != crashed:
                    log.exception("health check of %s %s crashed (counted as a failed check)",
                                  service, state.endpoint.url)
                crashed = repr(exc)
                result = CheckResult(False, error=f"check crashed: {exc!r}")
            run[0], run[1] = (run[0] + 1, 0) if result.ok else (0, run[1] + 1)
            self._report(service, state, result, run[0] if result.ok else run[1])
            # Fixed rate: a check that took longer than the interval skips the slots it overran.
            now = loop.time()
            due += interval
            if due <= now:
                due += interval * ((now - due) // interval + 1)

    def _report(self, service: str, state: EndpointHealth, result: CheckResult, in_a_row: int) -> None:
        try:
            before = state.healthy
            state.report_check(result.ok, self._clock())
            after = state.healthy
        except Exception:
            log.exception("recording a health check of %s %s failed", service, state.endpoint.url)
            return
        if before and not after:
            log.warning("endpoint %s of service %s is unhealthy after %d failed check%s: %s",
                        state.endpoint.url, service, in_a_row, "" if in_a_row == 1 else "s",
                        result.describe())
        elif after and not before:
            log.info("endpoint %s of service %s is healthy again after %d passed check%s",
                     state.endpoint.url, service, in_a_row, "" if in_a_row == 1 else "s")


__all__ = ["CheckResult", "HealthChecker", "check_endpoint", "check_request", "parse_status"]
