"""A channel pointer: which release a channel's hosts should run, signed.

Payload: channel, seq (strictly increasing per channel), manifest (digest of the
manifest payload), release_sha256 (copied from the manifest for readers), previous
(digest of the pointer this one replaced, None for the first), expires (UTC ISO time
after which agents refuse it: a frozen bucket cannot keep hosts on a release forever),
created, action (push | promote | rollback), actor, note, reverts (the release a
rollback left, so the next rollback skips it) and `plan` (reserved for a signed wave
plan; None = every host at once).

Invariants: check() refuses a pointer for another channel, an expired one and one
whose seq is below the highest the caller accepted, or equal to it with other content.
Equal content gives equal ETags (single-part ETag = MD5), so seq, not the ETag, orders
pointers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .envelope import Signed
from .errors import Refused

KIND = "releaser-pointer"
DEFAULT_TTL_S = 30 * 86400


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Pointer:
    channel: str
    seq: int
    manifest: str
    release_sha256: str
    previous: str | None
    expires: str
    created: str
    action: str
    actor: str
    note: str | None = None
    reverts: str | None = None
    plan: dict[str, Any] | None = None

    @classmethod
    def next(cls, current: Signed | None, *, channel: str, manifest: str,
             release_sha256: str, action: str, actor: str, note: str | None,
             ttl_s: float = DEFAULT_TTL_S, reverts: str | None = None,
             plan: dict[str, Any] | None = None) -> Pointer:
        now = datetime.now(UTC)
        seq = int(current.payload["seq"]) + 1 if current is not None else 1
        return cls(channel=channel, seq=seq, manifest=manifest,
                   release_sha256=release_sha256,
                   previous=current.digest if current is not None else None,
                   expires=_iso(now + timedelta(seconds=ttl_s)), created=_iso(now),
                   action=action, actor=actor, note=note, reverts=reverts, plan=plan)

    def payload(self) -> dict[str, Any]:
        return {"kind": KIND, "version": 1, **asdict(self)}

    def comment(self) -> str:
        # the trusted comment is signed too: `minisign -V` shows seq and expiry by hand
        return f"releaser pointer channel={self.channel} seq={self.seq} expires={self.expires}"

    @classmethod
    def from_signed(cls, signed: Signed, what: str) -> Pointer:
        p = signed.payload
        try:
            ptr = cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})
        except TypeError as exc:
            raise Refused(f"{what}: missing fields ({exc})") from None
        if (not isinstance(ptr.seq, int) or isinstance(ptr.seq, bool) or ptr.seq < 1
                or not isinstance(ptr.manifest, str) or not isinstance(ptr.expires, str)):
            raise Refused(f"{what}: fields of the wrong type")
        try:
            parse_time(ptr.expires)
        except ValueError:
            raise Refused(f"{what}: expires {ptr.expires!r} is not a time") from None
        return ptr

    def expired(self, now: datetime | None = None) -> bool:
        return parse_time(self.expires) <= (now or datetime.now(UTC))

    def check(self, channel: str, highest_seq: int, highest_digest: str | None,
              digest: str, what: str) -> None:
        """Refused unless this pointer may be acted on by an agent of `channel`."""
        if self.channel != channel:
            raise Refused(f"{what}: is for channel {self.channel!r}, not {channel!r}")
        if self.seq < highest_seq:
            raise Refused(f"{what}: seq {self.seq} is lower than {highest_seq}, the highest "
                          "this host accepted (replayed pointer)")
        if self.seq == highest_seq and highest_digest and digest != highest_digest:
            raise Refused(f"{what}: seq {self.seq} was accepted before with other content")
        if self.expired():
            raise Refused(f"{what}: expired at {self.expires} (nobody re-signed it; a "
                          "stale or frozen bucket?)")
