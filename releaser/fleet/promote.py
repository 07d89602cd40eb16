"""`releaser fleet promote`: point one channel at the release another channel has.

Refuses (exit 1) when fewer than --require-acked percent of the source channel's hosts
acknowledged that release as applied. The target channel gets a new signed pointer
naming the same (already verified) manifest: nothing is uploaded again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import channel as channels
from . import settings
from .errors import NothingThere, Refused
from .pointer import Pointer
from .status import acks

if TYPE_CHECKING:
    from ..config import Config


def promote(config: Config, *, source: str, target: str, require_acked: float,
            actor: str, note: str | None = None) -> dict[str, Any]:
    fleet = settings.fleet_of(config)
    src = settings.channel_of(fleet, source)
    dst = settings.channel_of(fleet, target)
    if src == dst:
        from .errors import UsageError

        raise UsageError("--from and --to name the same channel")
    key, trusted = settings.publisher_keys(fleet)
    bucket = settings.open_bucket(fleet)
    have = channels.read(bucket, src, trusted)
    if have.pointer is None:
        raise NothingThere(f"channel {src!r} has no pointer yet; nothing to promote")
    release = have.pointer.release_sha256
    hosts = acks(bucket, src)
    applied = [a for a in hosts if a.get("state") == "applied"
               and a.get("applied_sha256") == release]
    pct = 100.0 * len(applied) / len(hosts) if hosts else 0.0
    if require_acked > 0 and pct < require_acked:
        raise Refused(f"channel {src!r}: {len(applied)} of {len(hosts)} hosts ({pct:.0f} %) "
                      f"acknowledged release {release[:12]} as applied, fewer than the "
                      f"{require_acked:g} % required; nothing promoted")
    start = channels.read(bucket, dst, trusted)
    if start.pointer is not None and start.pointer.release_sha256 == release:
        return {"outcome": "unchanged", "from": src, "to": dst, "seq": start.pointer.seq,
                "sha256": release, "acked_pct": pct}

    def make(current: channels.Current) -> Pointer:
        return Pointer.next(current.signed, channel=dst, manifest=have.pointer.manifest,
                            release_sha256=release, action="promote", actor=actor,
                            note=note or f"promoted from {src} seq {have.pointer.seq}",
                            ttl_s=fleet.pointer_ttl_s)

    pointer, digest = channels.move(bucket, dst, key, trusted, start, make)
    return {"outcome": "promoted", "from": src, "to": dst, "seq": pointer.seq,
            "pointer": digest, "sha256": release, "from_seq": have.pointer.seq,
            "acked": len(applied), "hosts": len(hosts), "acked_pct": pct}
