"""The one exception type for bad user input: entry points print its message as one line and exit."""


class ConfigError(ValueError):
    """A bad config value, unknown name, missing dataset or mismatched checkpoint."""
