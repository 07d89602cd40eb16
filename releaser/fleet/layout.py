"""Where things live in the bucket (relative to the configured prefix).

  files/SHA256.db.zst            release file, zstd-compressed, create-only; SHA256 is
                                 the hash of the uncompressed database
  deltas/BASE-SHA256.zst         zstd --patch-from patch rebuilding release SHA256 from
                                 release BASE (both uncompressed hashes), create-only
  manifests/HASH.json            signed manifest of one push, create-only; HASH is the
                                 sha256 of its signed payload
  channels/NAME.json             signed channel pointer, changed only by compare-and-swap
  history/NAME/HASH.json         every pointer ever written for NAME, create-only, keyed
                                 by the sha256 of its payload (pointers link by `previous`)
  status/NAME/HOST_ID.json       an agent's acknowledgement (unsigned, informational)

Invariant: every name but channels/* and status/* is written once and never changed.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str, what: str) -> str:
    """Channel names and host ids become object keys: keep them plain."""
    if not _NAME.match(name):
        from .errors import UsageError

        raise UsageError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 64, not starting with a punctuation mark)")
    return name


def _hex(digest: str) -> str:
    if not _HEX64.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


def release_file(sha256: str) -> str:
    return f"files/{_hex(sha256)}.db.zst"


def delta_file(base_sha256: str, sha256: str) -> str:
    return f"deltas/{_hex(base_sha256)}-{_hex(sha256)}.zst"


def manifest(digest: str) -> str:
    return f"manifests/{_hex(digest)}.json"


def channel(name: str) -> str:
    return f"channels/{check_name(name, 'channel')}.json"


def history(name: str, digest: str) -> str:
    return f"history/{check_name(name, 'channel')}/{_hex(digest)}.json"


def status_prefix(name: str) -> str:
    return f"status/{check_name(name, 'channel')}/"


def status(name: str, host_id: str) -> str:
    return status_prefix(name) + check_name(host_id, "host_id") + ".json"
