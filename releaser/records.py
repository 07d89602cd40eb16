"""Rows of state.db as values: Release and Event (frozen), and the timestamp format.

Plain values: nothing here touches the database. A Release keeps its gate report as
stored (JSON text) and decodes it only when `report` is read, so listing releases or
walking history never pays for reports nobody prints.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Release:
    """A row of state.db's releases table."""

    id: int
    sha256: str
    size: int
    inode: int | None
    mtime_ns: int | None
    source: str | None
    note: str | None
    created_at: str
    published_at: str | None
    status: str
    status_reason: str | None
    report_json: str | None  # as state.db stores it; `report` decodes it once

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Release:
        d = dict(row)
        d["report_json"] = d.pop("report")
        return cls(**d)

    @cached_property
    def report(self) -> dict[str, Any] | None:
        return json.loads(self.report_json) if self.report_json else None

    def check_values(self) -> dict[str, float]:
        """The [[checks]] values recorded when this release passed its gates."""
        if not self.report:
            return {}
        return {
            c["name"]: c["observed"]
            for c in self.report.get("checks", [])
            if c.get("kind") == "check" and isinstance(c.get("observed"), int | float)
        }


@dataclass(frozen=True)
class Event:
    """A row of state.db's events table."""

    id: int
    at: str
    action: str
    release_id: int | None
    from_release_id: int | None
    actor: str
    reason: str | None
    outcome: str
    detail: dict[str, Any] | None
    uid: str | None = None  # the journal's identity of this event

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "action": self.action,
            "release_id": self.release_id,
            "from_release_id": self.from_release_id,
            "actor": self.actor,
            "reason": self.reason,
            "outcome": self.outcome,
            # e.g. {"analysis": {...}}: the queries, values and thresholds behind a revert
            "detail": self.detail,
        }
