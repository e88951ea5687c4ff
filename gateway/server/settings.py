"""Moved to `gateway.core.settings` (issue 10): the settings types are read by every layer, so they
live at the bottom of the stack, beside the errors they raise.

This name is kept only while the pool and the forwarder (being edited in the same step) still
import it; `[tool.importlinter]` in pyproject.toml lists each such import, and this module goes
with the last of them.
"""

from gateway.core.settings import ProxySettings

__all__ = ["ProxySettings"]
