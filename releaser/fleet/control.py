"""`fleet pause`, `fleet resume`, `fleet promote-wave`: steer a wave rollout.

Each writes a new signed pointer (seq + 1) naming the same release and manifest with the
plan changed (paused, or promoted = the next wave), through channel.move (compare-and-
swap): agents only ever act on signed state, and the pointer history records who
paused or promoted when. `fleet rollback` needs nothing here: its pointer has no plan,
so every host takes it at once, skipping every wave and bake.

A rollout paused by an inconclusive bake analysis (judge() derives it from the acks) is
resumed the same way: `fleet resume` adds the hosts whose analysis was inconclusive to
plan.accepted (signed, so the history says who accepted it), and judge() no longer
pauses on their result.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import channel as channels
from . import settings
from .errors import NothingThere, UsageError
from .pointer import Pointer
from .status import acks
from .waves import Plan, judge

if TYPE_CHECKING:
    from ..config import Config


def control(config: Config, *, channel: str | None, action: str, actor: str,
            note: str | None = None) -> dict[str, Any]:
    if action not in ("pause", "resume", "promote-wave"):
        raise UsageError(f"unknown rollout action {action!r}")
    fleet = settings.fleet_of(config)
    name = settings.channel_of(fleet, channel)
    key, trusted = settings.publisher_keys(fleet)
    bucket = settings.open_bucket(fleet)
    start = channels.read(bucket, name, trusted)
    if start.pointer is None or start.pointer.plan is None:
        raise NothingThere(f"channel {name!r} has no wave rollout in progress (its pointer "
                           "has no plan)")
    plan = Plan.parse(start.pointer.plan)
    j = judge(plan, start.pointer.release_sha256, acks(bucket, name))
    if j.state in ("aborted", "complete"):
        raise NothingThere(f"channel {name!r}: the rollout is {j.state}; nothing to "
                           f"{action}" + (f" ({'; '.join(j.reasons)})" if j.reasons else ""))
    # a no-op would still be a new pointer every agent re-reads: refuse it, change nothing
    if action == "pause" and plan.paused:
        raise NothingThere(f"channel {name!r}: the rollout is already paused; "
                           "`fleet resume` continues it")
    if action == "resume" and not plan.paused and not j.inconclusive:
        raise NothingThere(f"channel {name!r}: the rollout is {j.state}, not paused; "
                           "nothing to resume")
    if action == "pause":
        new = dataclasses.replace(plan, paused=True)
    elif action == "resume":
        new = dataclasses.replace(plan, paused=False,
                                  accepted=sorted(set(plan.accepted) | set(j.inconclusive)))
    else:
        # the next wave not yet promoted starts without waiting for its bake
        if plan.promoted >= len(plan.waves) - 1:
            raise NothingThere(f"channel {name!r}: every wave is already promoted")
        new = dataclasses.replace(plan, promoted=plan.promoted + 1)

    def make(current: channels.Current) -> Pointer:
        p = current.pointer
        assert p is not None
        return Pointer.next(current.signed, channel=name, manifest=p.manifest,
                            release_sha256=p.release_sha256, action=action, actor=actor,
                            note=note or p.note, ttl_s=fleet.pointer_ttl_s,
                            plan=new.as_dict())

    pointer, digest = channels.move(bucket, name, key, trusted, start, make)
    return {"outcome": action, "channel": name, "seq": pointer.seq, "pointer": digest,
            "accepted": [h for h in new.accepted if h not in plan.accepted],
            "sha256": pointer.release_sha256, "plan": pointer.plan,
            "open_waves": new.promoted + 1 if action == "promote-wave" else j.open_waves}
