"""Fleet error types; each maps to one of the documented exit codes.

  1 a release or its metadata was refused (bad signature, hash, expired, replayed seq)
  2 usage or config error ([fleet] missing, no key)
  3 another writer moved the channel pointer first (compare-and-swap lost)
  4 nothing to roll back to / promote
  5 bucket unreachable or I/O error
"""

from __future__ import annotations

from ..errors import (
    EXIT_GATE,
    EXIT_IO,
    EXIT_LOCKED,
    EXIT_NOTHING,
    ConfigError,
    ReleaserError,
    UsageError,
)

__all__ = ["BucketError", "ConfigError", "Conflict", "NotFound", "NothingThere", "Refused",
           "ReleaserError", "UsageError"]


class BucketError(ReleaserError):
    """The bucket could not be reached or answered an error we cannot act on."""

    exit_code = EXIT_IO


class NotFound(BucketError):
    """The object does not exist."""


class Conflict(ReleaserError):
    """A conditional write lost: the object exists (create-only) or changed (If-Match)."""

    exit_code = EXIT_LOCKED


class Refused(ReleaserError):
    """Metadata or a release file failed verification; nothing of it was used."""

    exit_code = EXIT_GATE


class NothingThere(ReleaserError):
    """No release to roll back or promote to."""

    exit_code = EXIT_NOTHING
