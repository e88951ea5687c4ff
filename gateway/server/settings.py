"""Moved to `gateway.core.settings` (issue 10): the settings types are read by every layer, so they
live at the bottom of the stack, beside the errors they raise.

This name is kept only while the data plane and the pool (being edited in the same step) still
import it; `.importlinter` flags each such import, and this module goes with the last of them.
"""

from gateway.core.settings import DeadlineSettings, FacadeSettings, ProxySettings, Settings

__all__ = ["DeadlineSettings", "FacadeSettings", "ProxySettings", "Settings"]
