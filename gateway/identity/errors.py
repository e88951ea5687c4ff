"""The identity branch of Peel's error tree (`routes.errors.PeelError` is the base).

    PeelError
    └── IdentityError        anything about identities, certificates or the CA
        ├── BadSpiffeId      a string that is not a SPIFFE ID (or not a service's)
        ├── CsrRefused       a CSR that is badly signed or asks for something it may not have
        ├── CaError          the CA directory: missing, half-made, or refusing the operation
        ├── NotAllowed       a join or renewal asks for an identity its credential does not give
        ├── ProofRefused     a renewal's chain, timestamp or signature does not hold
        ├── Revoked          a renewal presents a certificate that a config version revoked
        └── StateError       this gateway's state directory: missing, unreadable, inconsistent
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


class NotAllowed(IdentityError):
    """A CSR asks for an identity that its join token or current certificate does not give."""


class ProofRefused(IdentityError):
    """A renewal whose current certificate chain, timestamp or proof-of-possession fails."""


class Revoked(IdentityError):
    """A renewal whose current certificate is revoked (by serial, or its identity since its issue)."""


class StateError(IdentityError):
    """This gateway's identity state directory (`[identity] state_dir`) cannot be used."""
