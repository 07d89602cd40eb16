"""What an analysis run found, as a small JSON document, and where a host keeps it.

summarize() turns an analysis.AnalysisRun into a record:
  {"who": "publish" | "monitor" | "agent", "release_id", "outcome": running | pass |
   fail | inconclusive, "since", "until" (UTC ISO, the window), "inconclusive_limit",
   "reasons", "entries": [{"name", "evaluations", "failures", "failure_limit",
   "inconclusive", "last": measurement}]}
The same shape is in a fleet agent's ack (`analysis`), so `releaser status` and
`fleet status` say the same things the same way (describe()).

Invariants:
- Records are reports, never the store's state: each runner (the publish's verify
  window, the monitor's watch, the fleet agent's bake) writes only its own file,
  ROOT/analysis/WHO.json, as a new file (0664, in a 2775 folder like the rest of
  the store), fsynced and renamed into place, so a reader sees the old record or
  the new one. Writing one never takes the store's
  lock and a failure to write one is logged and changes nothing.
- Only the fleet agent reads its own record back (restore(): a restarted agent
  continues its bake's counts instead of starting them again); nothing reverts or
  promotes on a record alone.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .access import SHARED_FILE_MODE, make_dir
from .errors import ReleaserError
from .files import fsync_dir

if TYPE_CHECKING:
    from .analysis import AnalysisRun, Verdict

log = logging.getLogger("releaser.analysis")

RUNNING = "running"
WHO = ("publish", "monitor", "agent")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def summarize(run: AnalysisRun, verdict: Verdict, *, who: str, release_id: int | None,
              since: float, until: float, done: bool) -> dict[str, Any]:
    """The record of a run. since/until: wall-clock window; done: the window is over
    (else a passing run is `running`)."""
    outcome = verdict.outcome if (done or not verdict.ok) else RUNNING
    return {
        "who": who, "release_id": release_id, "outcome": outcome,
        "since": iso(since), "until": iso(until),
        "inconclusive_limit": run.cfg.inconclusive_limit,
        "reasons": list(verdict.reasons),
        "entries": [{"name": s.entry.name, "evaluations": s.evaluations,
                     "failures": s.failures, "failure_limit": s.entry.failure_limit,
                     "inconclusive": s.inconclusive,
                     "last": s.last.as_dict() if s.last else None}
                    for s in run.entries]}


def restore(run: AnalysisRun, record: dict[str, Any] | None) -> None:
    """Seed a new run's counts from an earlier record of the same release and window."""
    if not isinstance(record, dict):
        return
    counts = {e.get("name"): e for e in record.get("entries") or [] if isinstance(e, dict)}
    for s in run.entries:
        old = counts.get(s.entry.name)
        if old is None:
            continue
        for key in ("evaluations", "failures", "inconclusive"):
            value = old.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(s, key, value)


def describe(record: dict[str, Any] | None, now: float | None = None) -> str:
    """One line: watching until T / passed / failed (query, value, threshold) /
    inconclusive n of limit."""
    if not isinstance(record, dict):
        return "none"
    outcome = record.get("outcome")
    entries = [e for e in record.get("entries") or [] if isinstance(e, dict)]
    evaluations = sum(int(e.get("evaluations") or 0) for e in entries)
    limit = record.get("inconclusive_limit")
    unsure = max((int(e.get("inconclusive") or 0) for e in entries), default=0)
    unsure_note = f", inconclusive {unsure} of {limit}" if unsure else ""
    if outcome == RUNNING and record.get("until") is None:
        return "starting (no evaluation yet)"
    if outcome == RUNNING:
        until = parse_iso(record.get("until"))
        now = datetime.now(UTC).timestamp() if now is None else now
        if until is not None and until < now:
            return (f"watch ended at {record.get('until')} with no verdict recorded "
                    f"({evaluations} evaluations{unsure_note}; was its runner stopped?)")
        return f"watching until {record.get('until')} ({evaluations} evaluations so far" \
               f"{unsure_note})"
    if outcome == "pass":
        return f"passed ({evaluations} evaluations until {record.get('until')}{unsure_note})"
    if outcome == "fail":
        return "failed: " + "; ".join(record.get("reasons") or ["?"])
    if outcome == "inconclusive":
        return (f"inconclusive {unsure} of {limit} (not reverted): "
                + "; ".join(record.get("reasons") or ["?"]))
    return str(outcome)


# -- files ----------------------------------------------------------------------


def folder(root: Path) -> Path:
    return Path(root) / "analysis"


def save(root: Path, record: dict[str, Any]) -> None:
    """ROOT/analysis/WHO.json, atomically. Logs (never raises) on an OS error."""
    who = record["who"]
    assert who in WHO, who
    where = folder(root)
    path = where / f"{who}.json"
    tmp = where / f".{who}.json.tmp"
    try:
        # the store's modes (access.py): publishers and the monitor's user share it
        make_dir(where)
        with open(tmp, "w") as fh:
            os.fchmod(fh.fileno(), SHARED_FILE_MODE)
            json.dump(record, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(where)
    except (OSError, ReleaserError) as exc:
        log.warning("cannot record the analysis in %s: %s", path,
                    getattr(exc, "message", None) or exc)


def load(root: Path, who: str) -> dict[str, Any] | None:
    try:
        data = json.loads((folder(root) / f"{who}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_all(root: Path) -> list[dict[str, Any]]:
    """Every runner's record, newest window first."""
    found = [r for r in (load(root, who) for who in WHO) if r is not None]
    return sorted(found, key=lambda r: str(r.get("since")), reverse=True)
