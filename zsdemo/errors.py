"""User-facing errors. Every message says what went wrong and what to do about it."""


class ZsdemoError(Exception):
    """Base class: the message is meant to be shown to a person as is."""


class EmptySketchError(ZsdemoError):
    """The sketch has (almost) no ink."""


class ImageError(ZsdemoError):
    """An image cannot be read, or is too large to read safely."""


class WeightsUnavailableError(ZsdemoError):
    """The backbone's weights cannot be found locally or downloaded."""


class CheckpointError(ZsdemoError):
    """A prompt checkpoint is missing, corrupt or made for another model."""


class CacheError(ZsdemoError):
    """A gallery cache is missing, incomplete or unusable."""
