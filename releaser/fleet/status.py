"""`releaser fleet status` and `fleet releases`: the channel seen from the bucket.

status: the verified pointer plus every host's ack (status/CHANNEL/*.json) and a
summary (hosts per state, hosts on the pointer's release). Acks are unsigned reports:
shown, never trusted for anything but the promote threshold.
releases: the pointer chain (history/CHANNEL/*), newest first, each verified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import channel as channels
from . import settings
from .ackcache import AckCache
from .bucket import Bucket
from .waves import Plan, view

if TYPE_CHECKING:
    from ..config import Config


def _trusted(fleet: settings.Fleet) -> list:
    keys = settings.trusted_keys_or_empty(fleet)
    if not keys and fleet.signing_key is not None:
        keys = [settings.signing_key(fleet).public]
    if not keys:
        settings.trusted_keys(fleet)  # raises the config error
    return keys


def acks(bucket: Bucket, channel: str) -> list[dict[str, Any]]:
    """Every host's ack, all read (a fresh cache: LIST + one GET per host). A polling
    agent keeps its own AckCache instead and GETs only the acks that changed."""
    return AckCache().read(bucket, channel)


def status(config: Config, *, channel: str | None) -> dict[str, Any]:
    fleet = settings.fleet_of(config)
    name = settings.channel_of(fleet, channel)
    bucket = settings.open_bucket(fleet)
    current = channels.read(bucket, name, _trusted(fleet))
    pointer = current.pointer
    hosts = acks(bucket, name)
    states: dict[str, int] = {}
    for ack in hosts:
        states[str(ack.get("state"))] = states.get(str(ack.get("state")), 0) + 1
    on_release = sum(1 for a in hosts if pointer is not None
                     and a.get("applied_sha256") == pointer.release_sha256)
    return {
        "channel": name,
        "url": fleet.url,
        "pointer": None if pointer is None else {
            "seq": pointer.seq, "digest": current.signed.digest,  # type: ignore[union-attr]
            "sha256": pointer.release_sha256, "manifest": pointer.manifest,
            "action": pointer.action, "actor": pointer.actor, "note": pointer.note,
            "created": pointer.created, "expires": pointer.expires,
            "expired": pointer.expired()},
        "hosts": hosts,
        # a wave rollout (the pointer's signed plan) judged from the acks: waves.py
        "rollout": (None if pointer is None or pointer.plan is None else
                    view(Plan.parse(pointer.plan), pointer.release_sha256, hosts)),
        "summary": {"hosts": len(hosts), "on_pointer_release": on_release, **states},
    }


def releases(config: Config, *, channel: str | None, limit: int = 100) -> list[dict[str, Any]]:
    fleet = settings.fleet_of(config)
    name = settings.channel_of(fleet, channel)
    bucket = settings.open_bucket(fleet)
    trusted = _trusted(fleet)
    start = channels.read(bucket, name, trusted)
    return [{"seq": p.seq, "digest": d, "sha256": p.release_sha256, "action": p.action,
             "actor": p.actor, "note": p.note, "created": p.created, "expires": p.expires,
             "manifest": p.manifest, "reverts": p.reverts}
            for p, d in channels.history(bucket, name, trusted, start, limit)]
