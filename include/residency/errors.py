"""The project's own exceptions.

Store implementations translate SDK exceptions (botocore, google.api_core) into
these at the store boundary, so the engine never inspects provider error codes.
"""

from __future__ import annotations


class ResidencyError(Exception):
    """Base class of every error raised by the engine."""

    #: No retry can fix it (a policy mistake, a refusal): the task fails at once.
    permanent = False


class PolicyError(ResidencyError, ValueError):
    """A policy file or DAG param is invalid.

    The message always names the field and the offending value.
    """

    permanent = True

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid policy field {field!r} = {value!r}: {reason}")


class JurisdictionError(ResidencyError):
    """A bucket is not where the policy requires it to be, or preflight refused the run."""

    permanent = True


class StoreError(ResidencyError):
    """An operation on a bucket failed; carries the object or bucket URI."""

    #: Whether retrying the same call may succeed.
    transient = False

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"{uri}: {reason}")


class ObjectNotFound(StoreError):
    """The object (or the pinned version of it) does not exist."""


class BucketNotFound(StoreError):
    """The bucket does not exist."""


class PermissionDenied(StoreError):
    """The server refused the credentials (403, invalid key, expired token)."""


class PreconditionFailed(StoreError):
    """A conditional request was refused (If-Match / If-None-Match / generation)."""


class SourceChanged(StoreError):
    """The source object is no longer the version that was inventoried."""


class DestinationConflict(StoreError):
    """A different object already exists at the destination; never overwritten silently."""


class ChecksumMismatch(StoreError):
    """The bytes at the destination do not match the source."""


class TransientError(StoreError):
    """Throttling, 5xx, connection reset or timeout: worth retrying."""

    transient = True
