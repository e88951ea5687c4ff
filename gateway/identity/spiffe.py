"""SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md), pure.

A SPIFFE ID is `spiffe://<trust-domain><path>`. The rules, as the spec and go-spiffe's `spiffeid`
package apply them (go-spiffe's error texts are kept where they exist):

- the scheme is exactly `spiffe://` (lower case);
- the trust domain is 1-255 characters of `a-z 0-9 . - _`: no upper case, port, user info;
- the path is empty (the trust domain's own ID) or `/`-separated segments of `a-z A-Z 0-9 . - _`,
  none empty, none `.` or `..`, no trailing `/`; so no percent-encoding, query or fragment;
- the whole ID is at most 2048 bytes.

Peel's workload identities are `spiffe://<trust-domain>/svc/<service>`, `<service>` a service name
of the rules (`routes.fields.NAME_RE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.identity.errors import BadSpiffeId
from routes.fields import NAME_RE

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+\Z")
_SEGMENT = re.compile(r"[a-zA-Z0-9._-]+\Z")
SERVICE_PREFIX = "/svc/"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID; build it with `parse`, `service_id` or `trust_domain_id`."""

    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def service(self) -> str | None:
        """The service of a Peel workload ID (`/svc/<service>`), else None."""
        if self.path.startswith(SERVICE_PREFIX):
            name = self.path[len(SERVICE_PREFIX):]
            if NAME_RE.match(name):
                return name
        return None


def check_trust_domain(name: str) -> str:
    """`name` when it is a valid trust domain name; `BadSpiffeId` says why otherwise."""
    if not name:
        raise BadSpiffeId("trust domain is missing")
    if len(name) > MAX_TRUST_DOMAIN:
        raise BadSpiffeId(f"trust domain is longer than {MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.match(name):
        raise BadSpiffeId(f"trust domain {name!r}: characters are limited to lowercase letters, "
                          "numbers, dots, dashes, and underscores")
    return name


def _check_path(path: str) -> str:
    if not path:
        return path
    if not path.startswith("/"):
        raise BadSpiffeId(f"path {path!r} must start with '/'")
    if path.endswith("/"):
        raise BadSpiffeId("path cannot have a trailing slash")
    for segment in path[1:].split("/"):
        if not segment:
            raise BadSpiffeId("path cannot contain empty segments")
        if segment in (".", ".."):
            raise BadSpiffeId("path cannot contain dot segments")
        if not _SEGMENT.match(segment):
            raise BadSpiffeId(f"path segment {segment!r}: characters are limited to letters, numbers, "
                              "dots, dashes, and underscores")
    return path


def parse(text: str) -> SpiffeId:
    """The SPIFFE ID `text`, or `BadSpiffeId` naming the rule it breaks."""
    if not isinstance(text, str) or not text:
        raise BadSpiffeId("cannot be empty")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise BadSpiffeId(f"is longer than {MAX_ID_BYTES} bytes")
    if not text.startswith(SCHEME):
        raise BadSpiffeId(f"{text!r}: scheme is missing or invalid (must be {SCHEME})")
    rest = text[len(SCHEME):]
    domain, slash, path = rest.partition("/")
    check_trust_domain(domain)
    return SpiffeId(domain, _check_path(slash + path))


def trust_domain_id(trust_domain: str) -> SpiffeId:
    """`spiffe://<trust-domain>`: the trust domain's own ID."""
    return SpiffeId(check_trust_domain(trust_domain), "")


def service_id(trust_domain: str, service: str) -> SpiffeId:
    """`spiffe://<trust-domain>/svc/<service>`, the identity of a service's workloads."""
    if not NAME_RE.match(service):
        raise BadSpiffeId(f"service {service!r} must be 1-63 lower-case letters, digits, '.', '_' or '-', "
                          "starting and ending with a letter or digit")
    return SpiffeId(check_trust_domain(trust_domain), SERVICE_PREFIX + service)


def parse_service_id(text: str, trust_domain: str | None = None) -> SpiffeId:
    """A Peel workload ID (`spiffe://td/svc/<service>`), in `trust_domain` when given."""
    found = parse(text)
    if found.service is None:
        raise BadSpiffeId(f"{text!r} is not a service identity (spiffe://<trust-domain>/svc/<service>)")
    if trust_domain is not None and found.trust_domain != trust_domain:
        raise BadSpiffeId(f"{text!r} is not in the trust domain {trust_domain!r}")
    return found
