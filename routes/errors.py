"""The base of Peel's error tree and the errors of rules and the store.

Defined here, at the bottom of the import graph, because `routes/` (which raises them) imports
nothing from `gateway/`. The data-plane half of the tree is `gateway.core.errors`; both are mapped
to answers in one place (`gateway.core.problems`).

    PeelError
    ├── RuleError            a refused rule change; names the field and the value   422
    │   ├── NotFoundError    the named service, route or config version does not exist  404
    │   └── ConflictError    the change collides with stored state (duplicate)      409
    │       └── PreconditionFailed  `If-Match` named a version that is not the latest  412
    ├── StoreError           the store is unreachable, un-migrated or newer than the code
    └── (gateway.core.errors) ConfigError, UpstreamError and its subclasses
"""

from __future__ import annotations


class PeelError(Exception):
    """Base of every error Peel raises on purpose."""


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
