"""The built-in ``cache`` plugin: identical LLM calls answered from memory or Redis.

See docs/cache.md for the options, the key rules and the streaming behaviour.
"""

from gateway_plugins.cache.plugin import Cache, Config

__all__ = ["Cache", "Config"]
