"""The identity branch of Peel's error tree (`routes.errors.PeelError` is the base).

    PeelError
    └── IdentityError        anything about identities, certificates or the CA
        ├── BadSpiffeId      a string that is not a SPIFFE ID (or not a service's)
        ├── CsrRefused       a CSR that is badly signed or asks for something it may not have
        └── CaError          the CA directory: missing, half-made, or refusing the operation
"""

from __future__ import annotations

from routes.errors import PeelError


class IdentityError(PeelError):
    """Something about identities, certificates or the certificate authority."""


class BadSpiffeId(IdentityError):
    """Not a SPIFFE ID, with the rule it breaks."""


class CsrRefused(IdentityError):
    """A certificate signing request the CA will not sign, with the reason."""


class CaError(IdentityError):
    """The CA on disk cannot do what was asked (not initialised, a rotation in progress, ...)."""
