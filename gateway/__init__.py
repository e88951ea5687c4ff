"""Peel: API gateway and strangler-fig facade (README.md).

The request path's modules run compiled by mypyc when a build of them matches these sources
(`gateway.core.native`); the check runs here, before any of them can be imported. uvicorn's package
is imported without its command line (`gateway.core.lazy_uvicorn`), before any module imports it.
"""

from gateway.core import lazy_uvicorn as _lazy_uvicorn
from gateway.core import native as _native

_native.install()
_lazy_uvicorn.install()
