"""Renewal: a serving process keeps this gateway's certificate fresh, over the admin API.

    tasks = start_renewal(settings.identity, process_state)   # in Runtime.start_background

When `[identity] state_dir` holds an identity (`peel join` made it), a `Renewer` runs in every
serving process. It renews at half the certificate's life, with jitter (`renewal_delay`: 45 % to
55 % of the life, so a fleet joined together does not renew together), by sending the current
chain, a CSR for a fresh key and a proof of possession by the current key
(`gateway.identity.proof`) to the control plane the identity came from (`identity.json`'s
`control`, verified with `[identity] control_cacert`), and writes the new pair
(`gateway.identity.join.write_state`). The process that renewed loads the new files into its TLS
contexts at once (`on_new_certificate`, `IdentityBundle.refresh`); the other processes see them at
their next poll (`gateway.identity.bundle`: 2 s, a quarter second near the expiry); nothing is
restarted. At once matters when a
renewal comes late (a stalled machine, a control plane that was down): a certificate renewed a second
before it expires must not be presented for two more seconds after.

The processes of one gateway take turns through a lock on the state directory: the first one due
renews, the others find a certificate that is not theirs to renew any more and reschedule on it.
Each one also looks at `cert.pem` every `POLL_SECONDS`, so its view of the certificate (and the
`peel_certificate_expiry_seconds` metric it publishes) follows a renewal made by another.

When the control plane is unreachable or refuses, the failure is logged and retried with
exponential backoff and full jitter (1 s doubling to `MAX_BACKOFF`, and to no more than a quarter
of the certificate's remaining life); the gateway keeps serving on its current certificate
meanwhile. An expired certificate cannot be renewed (the CA refuses it): the log says to join again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.identity.errors import IdentityError

if TYPE_CHECKING:
    from gateway.identity.join import State

# gateway.identity.join, certs and proof (and so cryptography) are imported when an identity is
# there to renew: `start_renewal` costs a gateway without one nothing (serve.py calls it always).
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"

log = logging.getLogger("peel.identity")

POLL_SECONDS = 10.0
BASE_BACKOFF = 1.0
MAX_BACKOFF = 60.0
JITTER = 0.1  # ±10 % of the half life


class _IdentitySettings(Protocol):
    @property
    def state_dir(self) -> str: ...
    @property
    def control_cacert(self) -> str: ...


class _Publishes(Protocol):
    identity: Any


def renewal_delay(not_before: datetime, not_after: datetime, now: datetime,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds from `now` until the certificate is due for renewal (0: now).

    Due at 45-55 % of its life (half, ±10 % jitter). The life is counted from its issue, which is
    `notBefore` plus the CA's backdating (`certs.BACKDATE`), when the certificate is long enough to
    have one: a 1-minute certificate issued at 12:00 with notBefore 11:55 is due about 12:00:30.
    """
    from gateway.identity.certs import BACKDATE

    start = not_before + BACKDATE if not_before + BACKDATE < not_after else not_before
    life = (not_after - start).total_seconds()
    factor = 0.5 * (1.0 + JITTER * (2.0 * rand() - 1.0))
    due = start + timedelta(seconds=life * factor)
    return max(0.0, (due - now).total_seconds())


def backoff(failures: int, rand: Callable[[], float] = random.random, *, left: float | None = None) -> float:
    """Seconds before retry number `failures`: full jitter over [0, min(MAX, BASE * 2^(n-1))].

    With `left`, the seconds the certificate has left, the cap is also a quarter of that (never
    below BASE): a short certificate is not left to expire while its renewal waits out a minute of
    backoff after the control plane came back (a 1-minute certificate has 30 s after its renewal
    is due; `MAX_BACKOFF` alone could wait past them)."""
    cap = MAX_BACKOFF if left is None else min(MAX_BACKOFF, max(BASE_BACKOFF, left / 4))
    return min(cap, BASE_BACKOFF * 2.0 ** min(max(failures, 1) - 1, 16)) * rand()


def renew_state(state: State, *, cafile: str | None, now: datetime) -> State:
    """Trade `state`'s certificate for a new one with a fresh key; write it; the new state."""
    from cryptography.hazmat.primitives import serialization

    from gateway.identity import certs, proof
    from gateway.identity.join import RENEW_PATH, State, parse_answer, post, write_state

    key = certs.new_key()
    csr = certs.build_csr(key, state.identity).public_bytes(serialization.Encoding.PEM)
    timestamp = int(now.timestamp())
    body = {"chain": certs.cert_pem(*state.chain).decode(), "csr": csr.decode(), "timestamp": timestamp,
            "signature": proof.sign(state.key, csr, timestamp)}
    issued = parse_answer(post(state.control, RENEW_PATH, body, cafile=cafile), key, state.identity)
    write_state(state.directory, key, issued, state.control)
    return State(state.directory, key, issued.chain, state.identity, state.control)


class Renewer:
    """Renews the identity in `state_dir` (see the module docstring); `run()` until cancelled."""

    def __init__(self, state_dir: Path, *, cafile: str | None = None,
                 on_new_certificate: Callable[[], object] | None = None,
                 rand: Callable[[], float] = random.random,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.state_dir = state_dir
        self.cafile = cafile
        self.on_new_certificate = on_new_certificate
        self._rand = rand
        self._now = now
        self.identity: str | None = None
        self.not_after: datetime | None = None
        self.serial: int | None = None
        self.failures = 0
        self.renewals = 0

    def certificates(self) -> list[dict[str, Any]]:
        """The metric's facts: [{"identity", "not_after" (unix)}] (none before the first load)."""
        if self.identity is None or self.not_after is None:
            return []
        return [{"identity": self.identity, "not_after": self.not_after.timestamp()}]

    def _seen(self, state: State) -> None:
        self.identity = str(state.identity)
        self.not_after = state.leaf.not_valid_after_utc
        self.serial = state.leaf.serial_number

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.state_dir / CERT_FILE)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def load(self) -> State:
        """Read the state (blocking), under the lock: a crash's half swap is finished first."""
        from gateway.identity.join import locked, read_state

        with locked(self.state_dir):
            state = read_state(self.state_dir, recover=True)
        self._seen(state)
        return state

    def renew_if_due(self, serial: int) -> bool:
        """Renew (blocking) unless another process already replaced certificate `serial`."""
        from gateway.identity.join import locked, read_state

        with locked(self.state_dir):
            state = read_state(self.state_dir, recover=True)
            if state.leaf.serial_number != serial:
                self._seen(state)
                return False
            fresh = renew_state(state, cafile=self.cafile, now=self._now())
        self._seen(fresh)
        self.renewals += 1
        log.info("identity %s renewed: certificate %x valid until %s", fresh.identity,
                 fresh.leaf.serial_number, fresh.leaf.not_valid_after_utc.isoformat())
        return True

    async def run(self) -> None:
        while True:
            try:
                state = await asyncio.to_thread(self.load)
            except IdentityError as exc:
                log.error("identity: %s; not renewing until it is fixed", exc)
                await asyncio.sleep(POLL_SECONDS)
                continue
            leaf = state.leaf
            delay = renewal_delay(leaf.not_valid_before_utc, leaf.not_valid_after_utc, self._now(),
                                  self._rand)
            if delay > 0 and await self._changed_within(delay):
                self._new_certificate()
                continue  # someone else renewed (or joined again): schedule on the new certificate
            try:
                await asyncio.to_thread(self.renew_if_due, leaf.serial_number)
                self.failures = 0
                self._new_certificate()  # renewed here, or found renewed by another process
            except IdentityError as exc:
                self.failures += 1
                left = (leaf.not_valid_after_utc - self._now()).total_seconds()
                wait = backoff(self.failures, self._rand, left=left)
                if left <= 0:
                    log.error("identity %s: the certificate expired %.0f s ago and renewal failed (%s); "
                              "the CA renews only a valid certificate: join again with a new token",
                              state.identity, -left, exc)
                else:
                    log.warning("identity %s: renewal failed (attempt %d, %.0f s of certificate left; "
                                "serving on it meanwhile): %s; retrying in %.1f s",
                                state.identity, self.failures, left, exc, wait)
                await asyncio.sleep(wait)

    def _new_certificate(self) -> None:
        if self.on_new_certificate is not None:
            self.on_new_certificate()

    async def _changed_within(self, delay: float) -> bool:
        """Sleep `delay` seconds, looking at cert.pem every POLL_SECONDS: True when it changed."""
        stamp = self._stamp()
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, POLL_SECONDS))
            if self._stamp() != stamp:
                return True
        return False


def start_renewal(settings: _IdentitySettings, state: _Publishes,
                  on_new_certificate: Callable[[], object] | None = None) -> list[asyncio.Task[None]]:
    """The renewal task of this process when the state directory holds an identity (else none);
    the `Renewer` is put on `state.identity` for the metrics. `on_new_certificate` is called on
    the event loop when this process renewed, or saw that another one did (the identity's
    `refresh`, so its TLS contexts present the new certificate without waiting for their poll)."""
    directory = Path(settings.state_dir)
    if not ((directory / CERT_FILE).is_file() and (directory / KEY_FILE).is_file()):
        return []
    renewer = Renewer(directory, cafile=settings.control_cacert or None,
                      on_new_certificate=on_new_certificate)
    state.identity = renewer
    return [asyncio.create_task(renewer.run())]
