"""The built-in plugins (installed as the ``gateway_plugins`` package).

Each registers under the entry-point group ``gateway.plugins`` in pyproject.toml,
exactly as a third-party plugin does; the core knows none of them by name.
"""
