"""What an agent remembers (locally) and reports (in the bucket).

AgentState, in ROOT/fleet/agent.json (new file, fsync, rename): the highest seq and
pointer digest this host accepted (a lower seq is a replay, refused even after a
restart), the pointer ETag for conditional GETs, the pointer it finished with (so it
does not redo a rejected or reverted release every poll), byte counters, and since when
(UTC, this host's clock) it has been live on which release (healthy_since: kept across
restarts, so a restart does not restart this host's part of a bake).

Ack, at status/CHANNEL/HOST_ID.json: host_id, state (applied | rejected | applying |
reverted | waiting (for its wave, rollout.py)), the pointer seq/digest and release it is about, the release live here and the
seq that brought it, reasons, last_seen, bytes downloaded (attempt and total),
healthy_since (applied and live on the target since, UTC ISO; None otherwise) and
analysis (the record of the host's bake analysis, analysis_record.py; None: none runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..store import fsync_dir

STATES = ("applied", "rejected", "applying", "reverted", "waiting")  # waiting: a wave gate


@dataclass
class AgentState:
    channel: str = ""
    highest_seq: int = 0
    highest_digest: str | None = None
    etag: str | None = None
    finished: str | None = None  # pointer digest fully handled (any outcome)
    applied_seq: int = 0
    downloaded_total: int = 0
    healthy_sha: str | None = None  # the release live here since healthy_at
    healthy_at: float | None = None  # time.time() when it went live (or was first acked)
    last: dict[str, Any] = field(default_factory=dict)  # the last Ack

    @classmethod
    def load(cls, path: Path, channel: str) -> AgentState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(channel=channel)
        except ValueError:
            # a damaged file must not reset replay protection silently to zero...
            raise ValueError(f"{path}: not JSON; fix or remove it (a removed file forgets "
                             "the highest accepted seq)") from None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        state = cls(**known)
        if state.channel != channel:
            # ...but a channel change starts a new sequence
            return cls(channel=channel)
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(self), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


@dataclass
class Ack:
    host_id: str
    channel: str
    state: str
    seq: int | None
    pointer: str | None
    target_sha256: str | None
    applied_sha256: str | None
    applied_seq: int
    reasons: list[str]
    last_seen: str
    bytes_downloaded: int = 0
    bytes_downloaded_total: int = 0
    healthy_since: str | None = None
    analysis: dict[str, Any] | None = None
    version: int = 1

    def __post_init__(self) -> None:
        assert self.state in STATES, self.state

    def body(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode() + b"\n"
