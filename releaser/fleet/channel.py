"""Reading and moving a channel pointer; walking its history.

move() is the only writer of channels/NAME.json. It writes the new pointer to history
first (create-only, content-addressed: harmless if the move then loses), then swaps the
pointer with If-Match on the ETag it read. On 412/409 it re-reads: if the pointer now
holds exactly what it wrote (its own write answered late) it succeeded; if the pointer
is still the one it started from, it retries; if someone else moved it, it raises
Conflict (exit 3) naming who, instead of overwriting a decision made after its read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import layout
from .bucket import Bucket
from .envelope import Signed, open_signed, seal
from .errors import Conflict, NotFound, Refused
from .pointer import KIND, Pointer
from .sign import PublicKey, SecretKey

RETRIES = 5


@dataclass(frozen=True)
class Current:
    signed: Signed | None
    pointer: Pointer | None
    etag: str | None


def read(bucket: Bucket, channel: str, trusted: list[PublicKey]) -> Current:
    """The verified current pointer (all None when the channel has none yet)."""
    try:
        obj = bucket.get(layout.channel(channel))
    except NotFound:
        return Current(None, None, None)
    what = bucket.url(layout.channel(channel))
    signed = open_signed(obj.body, trusted, what, KIND)
    return Current(signed, Pointer.from_signed(signed, what), obj.etag)


def move(bucket: Bucket, channel: str, key: SecretKey, trusted: list[PublicKey],
         start: Current, make: Callable[[Current], Pointer]) -> tuple[Pointer, str]:
    """CAS the channel from `start` to make(start); (pointer, digest) on success."""
    current = start
    for _ in range(RETRIES):
        pointer = make(current)
        body, digest = seal(pointer.payload(), key, pointer.comment())
        try:
            bucket.put_create(layout.history(channel, digest), body)
        except Conflict:
            pass  # identical content already there
        try:
            bucket.put_if_match(layout.channel(channel), body, current.etag)
            return pointer, digest
        except Conflict:
            now = read(bucket, channel, trusted)
        if now.signed is not None and now.signed.digest == digest:
            return pointer, digest
        before = current.signed.digest if current.signed else None
        after = now.signed.digest if now.signed else None
        if after != before:
            who = (f"seq {now.pointer.seq} ({now.pointer.action} by {now.pointer.actor} at "
                   f"{now.pointer.created})" if now.pointer else "nothing")
            raise Conflict(f"channel {channel!r} was moved by another writer while this "
                           f"command ran: it is now {who}; nothing of this command was "
                           "applied; check `releaser fleet status` and re-run if still wanted")
        current = now
    raise Conflict(f"channel {channel!r}: the pointer kept changing under {RETRIES} "
                   "compare-and-swap attempts; retry")


def history(bucket: Bucket, channel: str, trusted: list[PublicKey], start: Current,
            limit: int = 1000) -> Iterator[tuple[Pointer, str]]:
    """The pointer chain from `start` backwards (newest first), each verified."""
    signed = start.signed
    count = 0
    while signed is not None and count < limit:
        what = f"{channel} pointer {signed.digest[:12]}"
        pointer = Pointer.from_signed(signed, what)
        yield pointer, signed.digest
        count += 1
        if not pointer.previous:
            return
        name = layout.history(channel, pointer.previous)
        try:
            obj = bucket.get(name)
        except NotFound:
            return  # history pruned beyond here
        signed = open_signed(obj.body, trusted, bucket.url(name), KIND)
        if signed.digest != pointer.previous:
            raise Refused(f"{bucket.url(name)}: content does not match its name")
