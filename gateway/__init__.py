"""An LLM sidecar gateway: an aiohttp reverse proxy with config-ordered pluggy hook chains.

The public plugin API is what this module exports; see docs/plugins.md.
"""

__version__ = "0.1.0"
#: The version of the public plugin API (docs/plugins.md#stability): the minor number
#: grows with additions, the major one when something is removed or changed.
PLUGIN_API_VERSION = "1.4"

from gateway.errors import GatewayError  # noqa: E402
from gateway.exchange import Exchange, Response, StashKey, StreamEvent, Usage  # noqa: E402
from gateway.hookspecs import CallNext, hookimpl  # noqa: E402
from gateway.plugins import PluginConfigError  # noqa: E402

__all__ = [
    "CallNext",
    "Exchange",
    "GatewayError",
    "PLUGIN_API_VERSION",
    "PluginConfigError",
    "Response",
    "StashKey",
    "StreamEvent",
    "Usage",
    "__version__",
    "hookimpl",
]
