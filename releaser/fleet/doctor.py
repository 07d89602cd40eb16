"""`releaser fleet doctor`: check that an S3 endpoint keeps the promises the fleet needs.

The fleet's safety rests on the store honouring conditional requests; several
S3-compatible servers shipped them ignored or racy, so this checks the real endpoint
instead of trusting a vendor's word. Properties (each named in the report):

  read-after-write         a GET right after a PUT (and an overwrite) returns those bytes
  create-only race         N concurrent `If-None-Match: *` writers: exactly one wins and
                           the object holds the winner's bytes
  stale If-Match refused   a PUT with the ETag of a replaced version is refused (412/409)
                           and leaves the object as it was
  concurrent CAS           N concurrent `If-Match: ETAG` writers from one version: exactly
                           one wins, the object holds its bytes
  conditional GET 304      `If-None-Match: ETAG` of the current version answers 304, and
                           a changed object is returned in full

Invariants: only keys under PREFIX/doctor/RUN-ID/ are written, and they are deleted at
the end whatever happened. An unreachable endpoint is an I/O error (exit 5), not a
failed property; a failed property is exit 1.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .bucket import Bucket
from .errors import BucketError, Conflict, NotFound

if TYPE_CHECKING:
    from ..config import Config

PROPERTIES = ("read-after-write", "create-only race", "stale If-Match refused",
              "concurrent CAS", "conditional GET 304")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Doctor:
    def __init__(self, bucket: Bucket, *, writers: int = 8, trials: int = 3) -> None:
        self.bucket = bucket
        self.writers = max(2, writers)
        self.trials = max(1, trials)
        run = f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.prefix = f"doctor/{run}/"
        self.written: set[str] = set()

    def _key(self, name: str) -> str:
        key = self.prefix + name
        self.written.add(key)
        return key

    def _race(self, write: Callable[[int], Any]) -> list[int]:
        """Run write(i) for every writer at once; the indexes that succeeded."""
        barrier = threading.Barrier(self.writers)
        won: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                barrier.wait(timeout=30)
                write(i)
                with lock:
                    won.append(i)
            except Conflict:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(self.writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        return sorted(won)

    # -- the properties ------------------------------------------------------

    def read_after_write(self) -> Check:
        key = self._key("raw")
        for n in range(self.trials):
            body = f"raw {n} {uuid.uuid4().hex}".encode()
            self.bucket.put(key, body)
            got = self.bucket.get(key).body
            if got != body:
                return Check(PROPERTIES[0], False, f"wrote {body!r}, read back {got[:60]!r}")
        return Check(PROPERTIES[0], True, f"{self.trials} writes read back at once")

    def create_only_race(self) -> Check:
        return self._one_winner_races(
            PROPERTIES[1], "create", "If-None-Match: * writers",
            lambda key: lambda i, body: self.bucket.put_create(key, body))

    def _one_winner_races(self, prop: str, name: str, writers: str,
                          start: Callable[[str], Callable[[int, bytes], Any]]) -> Check:
        """trials races, each of every writer at once on a fresh key (start(key) makes
        the key's write): exactly one wins, and the object holds the winner's bytes."""
        for n in range(self.trials):
            key = self._key(f"{name}-{n}")
            write = start(key)
            bodies = [f"{name} {n} writer {i}".encode() for i in range(self.writers)]
            won = self._race(lambda i, w=write, b=bodies: w(i, b[i]))
            if len(won) != 1:
                return Check(prop, False, f"{len(won)} of {self.writers} concurrent {writers} "
                             "succeeded (expected exactly 1)")
            got = self.bucket.get(key).body
            if got != bodies[won[0]]:
                return Check(prop, False, "the object does not hold the winner's bytes "
                             "(a loser overwrote it)")
        return Check(prop, True, f"{self.trials} races of {self.writers} writers: "
                     "exactly one winner each")

    def stale_if_match(self) -> Check:
        key = self._key("stale")
        first = self.bucket.put(key, b"version 1")
        try:
            self.bucket.put_if_match(key, b"version 2", first)
        except Conflict:
            return Check(PROPERTIES[2], False, "If-Match with the current ETag was refused")
        try:
            self.bucket.put_if_match(key, b"version 3", first)
        except Conflict:
            pass
        else:
            return Check(PROPERTIES[2], False, "a PUT with the ETag of a replaced version "
                         "was accepted (If-Match ignored)")
        got = self.bucket.get(key).body
        if got != b"version 2":
            return Check(PROPERTIES[2], False, f"after a refused PUT the object is {got!r}")
        return Check(PROPERTIES[2], True, "stale ETag refused, object unchanged")

    def concurrent_cas(self) -> Check:
        def start(key: str) -> Callable[[int, bytes], Any]:
            etag = self.bucket.put(key, b"base")
            return lambda i, body: self.bucket.put_if_match(key, body, etag)

        return self._one_winner_races(PROPERTIES[3], "cas",
                                      "If-Match writers from one version", start)

    def conditional_get(self) -> Check:
        key = self._key("cond")
        etag = self.bucket.put(key, b"cond 1")
        if self.bucket.get_if_changed(key, etag) is not None:
            return Check(PROPERTIES[4], False, "If-None-Match with the current ETag returned "
                         "the object instead of 304")
        self.bucket.put(key, b"cond 2")
        changed = self.bucket.get_if_changed(key, etag)
        if changed is None or changed.body != b"cond 2":
            return Check(PROPERTIES[4], False, "a changed object was not returned for an "
                         "old ETag")
        return Check(PROPERTIES[4], True, "304 for the current ETag, the new bytes after a "
                     "change")

    # -- all ---------------------------------------------------------------------

    def run(self) -> list[Check]:
        try:
            return [self.read_after_write(), self.create_only_race(), self.stale_if_match(),
                    self.concurrent_cas(), self.conditional_get()]
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        for key in sorted(self.written):
            try:
                self.bucket.delete(key)
            except (BucketError, NotFound):
                pass


def doctor(config: Config, *, writers: int = 8, trials: int = 3) -> dict[str, Any]:
    from . import settings

    fleet = settings.fleet_of(config)
    bucket = settings.open_bucket(fleet)
    started = time.monotonic()
    checks = Doctor(bucket, writers=writers, trials=trials).run()
    failed = [c.name for c in checks if not c.ok]
    return {"outcome": "failed" if failed else "ok", "url": fleet.url,
            "endpoint": fleet.endpoint_url or "AWS", "failed": failed,
            "checks": [asdict(c) for c in checks],
            "seconds": round(time.monotonic() - started, 2)}
