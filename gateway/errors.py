"""Peel's one error tree, mapped to answers in one place (`gateway.problems`).

    PeelError
    ├── ConfigError          bad settings (a key, a value); refused at start
    ├── RuleError            a refused rule change; names the field and the value
    │   └── ConflictError    the change collides with stored state (stale version, duplicate)
    ├── StoreError           the store is unreachable, un-migrated or newer than the code
    └── UpstreamError        forwarding failed; carries the Peel error code and the HTTP status
        ├── NoEndpoint       the service has no endpoint to try              503
        ├── CircuitOpen      the service's circuit breaker refused the request  503
        ├── ConnectError     the endpoint refused or could not be reached    502
        ├── UpstreamTimeout  connect, response-header or idle timeout        504
        │   └── DeadlineExceeded  the request's deadline (total timeout or incoming header) passed  504
        └── ProtocolError    the endpoint answered something that is not HTTP/1.1   502
            └── UpstreamReset  the connection closed before any response byte       502
"""

from __future__ import annotations


class PeelError(Exception):
    """Base of every error Peel raises on purpose."""


class ConfigError(PeelError):
    """A settings key or value is wrong. `key` is the dotted settings path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class RuleError(PeelError):
    """A rule change is refused; nothing was written.

    `field` is the path of the offending field in the declarative document, for example
    `routes[3].match.path_regex` or `services[orders].endpoints[0]`; `value` is what was given.
    """

    status = 422
    code = "invalid-rule"

    def __init__(self, field: str, message: str, value: object = None) -> None:
        super().__init__(f"{field}: {message}" + ("" if value is None else f" (got {value!r})"))
        self.field = field
        self.message = message
        self.value = value


class NotFoundError(RuleError):
    """The named service, route or config version does not exist."""

    status = 404
    code = "not-found"


class ConflictError(RuleError):
    """The change collides with what is stored (a duplicate, a stale config version)."""

    status = 409
    code = "conflict"


class PreconditionFailed(ConflictError):
    """`If-Match` named a config version that is no longer the latest."""

    status = 412
    code = "stale-version"


class StoreError(PeelError):
    """The store cannot be used: unreachable, not migrated, or migrated by newer code.

    `unreachable` is true when the database could not be reached at all (as opposed to a schema
    that is behind or ahead): a gateway may then start from its last good snapshot.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class UpstreamError(PeelError):
    """Forwarding to an upstream failed before a response reached the downstream."""

    status = 502
    code = "upstream-error"


class NoEndpoint(UpstreamError):
    status = 503
    code = "no-endpoint"


class CircuitOpen(UpstreamError):
    status = 503
    code = "circuit-open"


class ConnectError(UpstreamError):
    status = 502
    code = "upstream-connect-failed"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream-timeout"


class DeadlineExceeded(UpstreamTimeout):
    status = 504
    code = "deadline-exceeded"


class ProtocolError(UpstreamError):
    status = 502
    code = "upstream-protocol-error"


class UpstreamReset(ProtocolError):
    status = 502
    code = "upstream-reset"
