"""The one `ConfigError`: a config value, key, file or checkpoint config that jaxalign cannot use.

It lives in a module without imports so that both the run config (`jaxalign.config`) and the
model config (`jaxalign.models.config`) raise the same class. It is a `ValueError`, so the CLI
prints its one-line message without a traceback.
"""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config value, key or file is wrong; the message is one line naming the key (and where it came from)."""
