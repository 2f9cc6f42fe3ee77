"""Errors of bad input that every layer raises and the recipes turn into one line and exit code 2."""


class ConfigError(ValueError):
    """A bad recipe argument: the message names the field and the fix."""
