"""The channel's acks (status/CHANNEL/*.json) read through a per-process ETag cache.

A waiting agent reads every host's ack each poll of a wave rollout. Without a cache
that is one LIST plus one GET per host (O(hosts) requests per agent per poll, O(hosts^2)
fleet-wide); the LIST already carries each key's ETag, so only new or changed keys are
fetched and a poll during a bake is ~1 LIST.

Invariants:
- A cached ack is the parsed body of one GET, stored under the ETag that same GET
  returned: content keyed by its own ETag. It is reused only while the LIST shows that
  exact ETag for that key. An S3 ETag changes with the bytes (single-part: their MD5;
  multipart: a new ETag per upload); equal bytes give an equal ETag, which is harmless
  for a cache of content. Nothing is assumed from the LIST's ETag alone: a key whose GET
  ETag differs from what the next LIST shows (changed in between) is read again.
- A key the LIST no longer shows is dropped (memory bounded by the listed keys), and a
  key listed with no ETag, or whose GET returns none, is never cached (GET each poll).
- Acks stay unsigned hints, as without the cache: they can hold a host back or send it
  to the previous release its signed plan names, never make it take anything unsigned.
  Nothing read here is executed.
- A missing key (deleted between LIST and GET) is skipped and not cached; a body that is
  not a JSON object is skipped, and remembered as such under its ETag (same bytes).
"""

from __future__ import annotations

import json
from typing import Any

from . import layout
from .bucket import Bucket
from .errors import NotFound

MAX_ACK_BYTES = 1 << 20


def _etag(value: str) -> str:
    return value.strip().strip('"')


def parse(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class AckCache:
    """{key: (etag, parsed ack or None)} for one channel's acks, across polls.

    A fresh instance reads every ack (one-shot commands); an agent keeps one per process.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self.gets = 0  # GETs issued by the last read() (the bench and logs show it)

    def read(self, bucket: Bucket, channel: str) -> list[dict[str, Any]]:
        """Every listed ack, sorted by host_id; GETs only keys new or changed."""
        fresh: dict[str, tuple[str, dict[str, Any] | None]] = {}
        out: list[dict[str, Any]] = []
        self.gets = 0
        for item in bucket.listing(layout.status_prefix(channel)):
            listed = _etag(item.etag)
            cached = self._by_key.get(item.name)
            if listed and cached is not None and cached[0] == listed:
                ack = cached[1]
                fresh[item.name] = cached
            else:
                self.gets += 1
                try:
                    obj = bucket.get(item.name, max_bytes=MAX_ACK_BYTES)
                except NotFound:
                    continue
                ack = parse(obj.body)
                if _etag(obj.etag):
                    fresh[item.name] = (_etag(obj.etag), ack)
            if ack is not None:
                out.append(ack)
        self._by_key = fresh  # keys no longer listed are dropped
        return sorted(out, key=lambda a: str(a.get("host_id")))
