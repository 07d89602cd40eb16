"""What publish and rollback return: plain data for the CLI, the watcher and --json.

Data only, no I/O; as_dict() is the --json shape the README documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import gates, verify


@dataclass
class PublishResult:
    """What a publish did, for the CLI and --json."""

    outcome: str  # published | rejected | reverted | validated
    source: str
    release_id: int | None = None
    slot: str | None = None
    sha256: str | None = None
    size: int | None = None
    previous_release_id: int | None = None
    # what `releaser rollback` would put back now (None: nothing)
    rollback_target: int | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: gates.GateReport | None = None
    post_swap: gates.GateReport | None = None
    verification: verify.VerifyReport | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # --dry-run: the candidate against the live release (diff.diff_files)
    diff: dict[str, Any] | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "dry_run": self.dry_run,
            "release_id": self.release_id,
            "slot": self.slot,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "previous_release_id": self.previous_release_id,
            "rollback_target": self.rollback_target,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "checks": [r.as_dict() for r in self.report.results] if self.report else [],
            "post_swap_checks": (
                [r.as_dict() for r in self.post_swap.results] if self.post_swap else []),
            "verify": self.verification.as_dict() if self.verification else None,
            "timings_ms": self.timings_ms,
            "diff": self.diff,
        }


@dataclass
class RollbackResult:
    """What a rollback did, for the CLI and --json."""

    action: str
    release_id: int
    from_release_id: int | None
    slot: str
    sha256: str
    reason: str | None
    duration_ms: float = 0.0
    # good releases passed over on the way back (their files are gone)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": "ok",
            "skipped": self.skipped,
            "action": self.action,
            "release_id": self.release_id,
            "from_release_id": self.from_release_id,
            "slot": self.slot,
            "sha256": self.sha256,
            "reason": self.reason,
            "duration_ms": self.duration_ms,
        }
