"""Domain errors users can act on. Inner layers raise these; only the HTTP layer maps them to status codes."""

from __future__ import annotations


class OceanoError(Exception):
    """Base class: the message is shown to the user as is, so it must say what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with its attributes (retry_after too), so that an error raised in the core process is raised
        again, the same, in the HTTP worker that asked (app.core)."""
        return _rebuilt, (type(self), self.message, self.__dict__)


def _rebuilt(cls: type[OceanoError], message: str, state: dict[str, object]) -> OceanoError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class BadImage(OceanoError):
    """The bytes claim to be an image but cannot be decoded, or its dimensions are unusable."""


class UnsupportedImage(OceanoError):
    """The bytes are not an image format we read (JPEG, PNG, WebP, BMP, TIFF, GIF)."""


class ImageTooLarge(OceanoError):
    """Over MAX_UPLOAD_MB, or over the pixel limit (decompression bomb guard)."""


class InvalidRequest(OceanoError):
    """A parameter is out of range or malformed."""


class NotFound(OceanoError):
    """No face / thumbnail / job with that id."""


class NoSuchHead(OceanoError):
    """A classifier head name that is not registered or not available."""


class EngineBusy(OceanoError):
    """The inference gate could not be acquired within GPU_ACQUIRE_TIMEOUT."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(OceanoError):
    """The vector store cannot be reached or opened."""


class PackMismatch(OceanoError):
    """The collection was built with another model pack: its embeddings are not comparable."""


class ModelPackError(OceanoError):
    """A model pack is missing or malformed (start-up error)."""


class RequestTimeout(OceanoError):
    """The work for one request took longer than REQUEST_TIMEOUT."""


class ClientTooSlow(OceanoError):
    """The client did not send its request in time (BODY_TIMEOUT): nothing of it was worked on."""


class ShuttingDown(OceanoError):
    """The service is stopping: work is refused until it is back."""


class IncompatibleState(OceanoError):
    """A state file (ingest SQLite) was written by a newer Oceano with another schema."""


class StorageFull(OceanoError):
    """The disk holding the collection or the thumbnails is full: nothing was written."""


class NotAuthenticated(OceanoError):
    """No API key where one is needed, or a key that is unknown or revoked."""


class AccessDenied(OceanoError):
    """The caller may not do this: a key without the scope, a write from the network while no key exists, a path
    outside INGEST_ROOTS."""


class Conflict(OceanoError):
    """The name is taken (an API key)."""


class RateLimited(OceanoError):
    """Over RATE_LIMIT: `retry_after` seconds until the window lets the next request in."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
