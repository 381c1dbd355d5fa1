"""ganflow: train, sample and score GANs in a reproducible DVC pipeline."""

__version__ = "0.1.0"


class GanflowError(Exception):
    """A user-facing error: stages print its one-line message and exit non-zero."""
