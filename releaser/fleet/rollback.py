"""`releaser fleet rollback`: point a channel back at an earlier release.

A rollback is a new pointer (seq + 1) naming an earlier manifest, never a rewrite of
history: agents only move forward in seq. Without --to, the target is the newest
release in the channel's history that differs from the current one and was not itself
rolled back from; with --to SEQ, the release that pointer SEQ named. Agents that still
hold the release (slot or archive) switch with no download.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import channel as channels
from . import settings
from .errors import NothingThere
from .pointer import Pointer

if TYPE_CHECKING:
    from ..config import Config


def pick_target(history: Iterable[tuple[Pointer, str]], to_seq: int | None) -> Pointer:
    """Reads the chain (newest first) only as far as the target: each step back is a GET
    and a signature check, so a rollback costs the distance, not the channel's age."""
    chain = iter(history)
    current = next(chain)[0]
    if to_seq is not None:
        for pointer, _digest in itertools.chain([(current, "")], chain):
            if pointer.seq == to_seq:
                if pointer.release_sha256 == current.release_sha256:
                    raise NothingThere(f"seq {to_seq} named the release the channel already "
                                       "has")
                return pointer
            if pointer.seq < to_seq:
                break  # seqs only fall going back
        raise NothingThere(f"channel {current.channel!r} has no seq {to_seq} in its history; "
                           "see `releaser fleet releases`")
    skip = {current.release_sha256}
    for pointer, _digest in itertools.chain([(current, "")], chain):
        if pointer.reverts:
            skip.add(pointer.reverts)
        if pointer.release_sha256 not in skip:
            return pointer
    raise NothingThere(f"channel {current.channel!r}: no earlier release to roll back to")


def rollback(config: Config, *, channel: str | None, to_seq: int | None, actor: str,
             note: str | None = None) -> dict[str, Any]:
    fleet = settings.fleet_of(config)
    name = settings.channel_of(fleet, channel)
    key, trusted = settings.publisher_keys(fleet)
    bucket = settings.open_bucket(fleet)
    start = channels.read(bucket, name, trusted)
    if start.pointer is None:
        raise NothingThere(f"channel {name!r} has no pointer yet; nothing to roll back")
    target = pick_target(channels.history(bucket, name, trusted, start), to_seq)
    left = start.pointer.release_sha256

    def make(current: channels.Current) -> Pointer:
        return Pointer.next(current.signed, channel=name, manifest=target.manifest,
                            release_sha256=target.release_sha256, action="rollback",
                            actor=actor, note=note or f"rollback to seq {target.seq}",
                            ttl_s=fleet.pointer_ttl_s, reverts=left)

    pointer, digest = channels.move(bucket, name, key, trusted, start, make)
    return {"outcome": "rolled-back", "channel": name, "seq": pointer.seq,
            "pointer": digest, "to_seq": target.seq, "sha256": target.release_sha256,
            "from_sha256": left, "manifest": target.manifest}
