"""The data-plane and settings half of Peel's one error tree; the base and the rule and store
errors are `routes.errors` (the bottom of the import graph). Both are mapped to answers in one
place (`gateway.core.problems`).

    PeelError                (routes.errors, with RuleError, NotFoundError, ConflictError,
    │                         PreconditionFailed, StoreError)
    ├── ConfigError          bad settings (a key, a value); refused at start
    └── UpstreamError        forwarding failed; carries the Peel error code and the HTTP status
        ├── NoEndpoint       the service has no endpoint to try              503
        ├── CircuitOpen      the service's circuit breaker refused the request  503
        ├── ConnectError     the endpoint refused or could not be reached    502
        │   ├── UpstreamTlsError   the TLS handshake failed (certificate not trusted, wrong name)  502
        │   └── UpstreamTlsConfig  the service's TLS files could not be loaded by this process   502
        ├── UpstreamTimeout  connect, response-header or idle timeout        504
        │   └── DeadlineExceeded  the request's deadline (total timeout or incoming header) passed  504
        └── ProtocolError    the endpoint answered something that is not HTTP/1.1   502
            └── UpstreamReset  the connection closed before any response byte       502
"""

from __future__ import annotations

from routes.errors import PeelError


class ConfigError(PeelError):
    """A settings key or value is wrong. `key` is the dotted settings path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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


class UpstreamTlsError(ConnectError):
    status = 502
    code = "upstream-tls-failed"


class UpstreamTlsConfig(ConnectError):
    status = 502
    code = "upstream-tls-config"


class UpstreamIdentityMismatch(ConnectError):
    """A peer gateway's certificate verified, but names another identity than the service expects."""

    status = 502
    code = "upstream-identity-mismatch"


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
