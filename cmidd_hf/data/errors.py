"""The data layer's error (its own module so that the loaders and the IDX import share it without a circle)."""


class DataError(ValueError):
    """Bad dataset input: the message names the field and the fix."""
