"""Peel: API gateway and strangler-fig facade (README.md).

The request path's modules run compiled by mypyc when a build of them matches these sources
(`gateway.core.native`); the check runs here, before any of them can be imported.
"""

from gateway.core import native as _native

_native.install()
