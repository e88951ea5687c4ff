"""Revoked workload certificates and the fleet's mesh switches, as values of the document (pure).

    revocations:                              # top level of the YAML document
      - {serial: 5f3a09c2e1, at: "2026-12-03T18:00:00Z", reason: key leaked}
      - {identity: spiffe://peel.internal/svc/billing, at: "2026-12-03T18:05:00Z"}
    mesh:
      inbound_mtls: strict                    # or permissive; absent: each gateway's settings

A revocation names one certificate by its serial (hex, as `openssl x509 -serial` or
`identity.json` print it) or every certificate of one SPIFFE ID **issued before** `at`: a VM that
joins again afterwards gets a certificate issued later, which is not refused. A certificate's issue
time is its `notBefore` plus the CA's backdating (5 minutes, `gateway.identity.certs.BACKDATE`),
which the caller passes in (`Revocations.refuses`): this module knows no certificates.

They travel with the config version like the routes, so every gateway that follows the table gets
them within its poll interval (docs/mtls.md, "Revocation"). Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from routes.errors import RuleError
from routes.fields import mapping, sequence, string

MODES = ("permissive", "strict")
# A SPIFFE ID as gateway.identity.spiffe checks it (routes imports nothing from gateway): the
# scheme, a trust domain of a-z 0-9 . - _, and non-empty path segments other than . and ..
SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]{1,255}(?:/[A-Za-z0-9._-]+)+$")
SERIAL_RE = re.compile(r"^[0-9a-f]{1,40}$")
MAX_REASON = 200


def serial_key(value: str) -> str:
    """A serial in the one form compared: lower-case hex, no `0x`, colons or leading zeros."""
    text = value.strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    return text.lstrip("0") or "0"


def _serial(value: object, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads an all-digit serial as an integer: the digits were hex all along
        value = str(value)
    text = serial_key(string(value, where))
    if not SERIAL_RE.match(text):
        raise RuleError(where, "must be a certificate serial in hex (up to 40 digits, as "
                        "`openssl x509 -noout -serial` prints it)", value)
    return text


def _identity(value: object, where: str) -> str:
    text = string(value, where)
    segments = text[len("spiffe://"):].split("/")[1:]
    if len(text) > 2048 or not SPIFFE_RE.match(text) or any(s in (".", "..") for s in segments):
        raise RuleError(where, "must be a SPIFFE ID such as spiffe://peel.internal/svc/orders", value)
    return text


def parse_time(value: object, where: str) -> datetime:
    """An instant in UTC to the second: ISO 8601 with a zone, or what YAML made of one."""
    if isinstance(value, datetime):
        when = value
    else:
        text = string(value, where)
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise RuleError(where, "must be a time in ISO 8601 with a zone, such as "
                            "2026-12-03T18:00:00Z", value) from None
    if when.tzinfo is None:
        raise RuleError(where, "must say its zone (end it with Z for UTC)", str(value))
    return when.astimezone(UTC).replace(microsecond=0)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked certificate (`serial`) or identity (`identity`, issued before `at`)."""

    at: datetime
    serial: str | None = None
    identity: str | None = None
    reason: str = ""

    @classmethod
    def parse(cls, data: object, where: str) -> Revocation:
        m = mapping(data, where, ("serial", "identity", "at", "reason"))
        given = [k for k in ("serial", "identity") if k in m]
        if len(given) != 1:
            raise RuleError(where, "needs exactly one of serial or identity", dict(m))
        if "at" not in m:
            raise RuleError(f"{where}.at", "is required (when the revocation was made)")
        reason = string(m.get("reason", ""), f"{where}.reason", empty=True)
        if len(reason) > MAX_REASON or any(ord(c) < 0x20 or ord(c) == 0x7f for c in reason):
            raise RuleError(f"{where}.reason", f"must be one line of at most {MAX_REASON} "
                            "characters", reason)
        at = parse_time(m["at"], f"{where}.at")
        if "serial" in m:
            return cls(at, serial=_serial(m["serial"], f"{where}.serial"), reason=reason)
        return cls(at, identity=_identity(m["identity"], f"{where}.identity"), reason=reason)

    @property
    def subject(self) -> str:
        """What is revoked, for people: `serial 5f3a` or the SPIFFE ID."""
        return f"serial {self.serial}" if self.serial is not None else str(self.identity)

    def sort_key(self) -> tuple[datetime, str, str]:
        return (self.at, self.serial or "", self.identity or "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = ({"serial": self.serial} if self.serial is not None
                               else {"identity": self.identity})
        out["at"] = format_time(self.at)
        if self.reason:
            out["reason"] = self.reason
        return out


def parse_revocations(data: object) -> tuple[Revocation, ...]:
    """The document's `revocations` list, checked and in canonical order (by time)."""
    items = [Revocation.parse(d, f"revocations[{i}]")
             for i, d in enumerate(sequence(data or [], "revocations"))]
    return canonical(items)


def canonical(items: Iterable[Revocation]) -> tuple[Revocation, ...]:
    """`items` by time; a serial listed twice is refused (revoking it once is enough)."""
    seen: set[str] = set()
    out = sorted(items, key=Revocation.sort_key)
    for r in out:
        if r.serial is not None:
            if r.serial in seen:
                raise RuleError(f"revocations[{r.serial}].serial", "is revoked twice", r.serial)
            seen.add(r.serial)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Mesh:
    """Fleet-wide switches of the east-west mesh. `inbound_mtls`: the mode of every gateway's
    inbound listener (None: each gateway's `[listeners.inbound] mtls` setting)."""

    inbound_mtls: str | None = None

    @classmethod
    def parse(cls, data: object) -> Mesh | None:
        m = mapping(data or {}, "mesh", ("inbound_mtls",))
        mode = m.get("inbound_mtls")
        if mode is None:
            return None
        if mode not in MODES:
            raise RuleError("mesh.inbound_mtls", f"must be one of {', '.join(MODES)} (the inbound "
                            "listener itself is turned on in each gateway's settings)", mode)
        return cls(str(mode))

    def to_dict(self) -> dict[str, Any]:
        return {"inbound_mtls": self.inbound_mtls} if self.inbound_mtls is not None else {}


class Revocations:
    """The revocations of one config version, indexed for the check made per handshake.

    `refuses(serial, identity, issued)`: the revocation that refuses a certificate with that serial
    (any form `serial_key` reads), SPIFFE ID (None: none) and issue time, else None.
    """

    __slots__ = ("_identities", "_serials", "items")

    def __init__(self, items: Iterable[Revocation] = ()) -> None:
        self.items = tuple(items)
        self._serials = {r.serial: r for r in self.items if r.serial is not None}
        latest: dict[str, Revocation] = {}
        for r in self.items:
            if r.identity is not None and (r.identity not in latest or r.at > latest[r.identity].at):
                latest[r.identity] = r
        self._identities = latest

    def __bool__(self) -> bool:
        return bool(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Revocations) and other.items == self.items

    def __hash__(self) -> int:
        return hash(self.items)

    def refuses(self, serial: str | None, identity: str | None, issued: datetime | None) -> Revocation | None:
        if serial is not None and self._serials:
            found = self._serials.get(serial_key(serial))
            if found is not None:
                return found
        if identity is not None:
            by_identity = self._identities.get(identity)
            # issued at or before the revocation (to the second): refused. Unknown issue time: refused.
            if by_identity is not None and (issued is None or issued <= by_identity.at):
                return by_identity
        return None


NO_REVOCATIONS = Revocations()

__all__ = ["MODES", "NO_REVOCATIONS", "Mesh", "Revocation", "Revocations", "canonical", "format_time",
           "parse_revocations", "parse_time", "serial_key"]
