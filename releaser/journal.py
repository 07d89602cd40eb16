"""The store's journal (root/journal.jsonl): the record of what happened, as fsynced JSON lines.

state.db is an index that can be rebuilt from this file and the manifests
(see manifest.py, rebuild.py). One line per change to the record:
- `{"t": "release", "id": N, ...}`: an upsert of the release row fields it carries
  (the first one for an id carries every field; later ones what changed);
- `{"t": "event", "uid": U, ...}`: one history event (publish, reject, rollback...),
  identified by its uid (state.db rows from before the journal: "db-<id>");
- `{"t": "compaction", ...}`: `[history] keep_events` removed old events and
  release rows (what a rebuild drops too), and `{"t": "checkpoint", ...}`: the
  first line of a journal rotated to a snapshot of its record (journal_compact.py).

Invariants:
- append-only: a line is added with one write() on an O_APPEND descriptor and
  fsynced before the call returns; nothing is ever rewritten in place (`fsck
  --repair` dropping a torn line and a rotation both write a new file, fsync it
  and rename it over this one);
- a torn last line (a crash mid-write, a truncated copy) is ignored by readers
  and never glued to: an append after a torn tail starts a new line;
- a line written while state.db could not be written carries `"degraded": true`
  and leaves the marker file root/journal.degraded, so the next command that
  can write state.db imports it (rebuild.import_degraded) instead of scanning
  the journal every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import fsync_dir, write_all

JOURNAL_NAME = "journal.jsonl"
DEGRADED_MARKER = "journal.degraded"
# a tail read for the newest entries reads this much from the end
TAIL_BYTES = 256 * 1024
# a mark (newest_event_after) identifies the file by a hash of this many bytes before its offset
MARK_BYTES = 256
# release and event: the record; compaction and checkpoint: see journal_compact.py
LINE_TYPES = ("release", "event", "compaction", "checkpoint")


def new_uid() -> str:
    # what secrets.token_hex(8) returns, without importing secrets (random, hmac,
    # base64) into every command
    return os.urandom(8).hex()


@dataclass
class JournalRead:
    """The whole lines of a journal, and what was wrong with the rest."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    # byte offset just after the last whole line (where a repair cuts a torn tail)
    good_size: int = 0
    torn_tail: int = 0  # bytes after the last newline (a line cut mid-write)
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers not JSON
    missing: bool = False

    def problems(self, path: Path) -> list[str]:
        out = []
        if self.torn_tail:
            out.append(f"{path}: the last line is cut short ({self.torn_tail} bytes after the "
                       "last whole line); the event it held is lost")
        for n in self.bad_lines[:10]:
            out.append(f"{path}: line {n} is not a JSON object; skipped")
        if len(self.bad_lines) > 10:
            out.append(f"{path}: {len(self.bad_lines) - 10} more unreadable lines")
        return out


class Journal:
    def __init__(self, root: Path) -> None:
        self.path = root / JOURNAL_NAME
        self.marker = root / DEGRADED_MARKER

    def exists(self) -> bool:
        return self.path.exists()

    def append(self, entries: Iterable[dict[str, Any]], *, degraded: bool = False) -> None:
        """Append entries as lines, fsynced; one write() for all of them."""
        lines = []
        for entry in entries:
            doc = dict(entry)
            if degraded:
                doc["degraded"] = True
            lines.append(json.dumps(doc, separators=(",", ":"), default=str,
                                    ensure_ascii=False))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        if degraded:
            _touch_durably(self.marker)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o664)
        try:
            if created:  # every publisher appends: group-writable whatever the umask
                os.fchmod(fd, 0o664)
            if not created and _ends_torn(fd):
                data = b"\n" + data  # never glue a new line to a torn one
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)

    def read(self) -> JournalRead:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return JournalRead(missing=True)
        return parse(raw)

    def _read_tail(self, nbytes: int) -> tuple[int, bytes] | None:
        """(offset, bytes) of the file's last nbytes; None when there is no journal."""
        try:
            with open(self.path, "rb") as fh:
                start = max(0, fh.seek(0, os.SEEK_END) - nbytes)
                fh.seek(start)
                return start, fh.read()
        except FileNotFoundError:
            return None

    def tail(self, nbytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
        """The newest whole lines (up to nbytes from the end), oldest first."""
        found = self._read_tail(nbytes)
        if found is None:
            return []
        start, raw = found
        if start > 0:
            cut = raw.find(b"\n")
            raw = raw[cut + 1:] if cut >= 0 else b""
        return parse(raw).entries

    def newest_event_after(self, offset: int, before_sha256: str
                           ) -> tuple[dict[str, Any] | None, int, str] | None:
        """The newest event among the whole lines after byte offset, if the bytes
        before it still hash to before_sha256 (None: the journal was rotated, cut or
        replaced since that mark). Returns (event or None, end, hash before end):
        end is just after the last whole line, where the next mark goes."""
        try:
            with open(self.path, "rb") as fh:
                start = max(0, offset - MARK_BYTES)
                fh.seek(start)
                raw = fh.read()
        except FileNotFoundError:
            return None
        if len(raw) < offset - start or _sha(raw[:offset - start]) != before_sha256:
            return None
        end = raw.rfind(b"\n") + 1
        if end < offset - start:
            end = offset - start  # nothing whole after the mark
        return (_newest_event(raw[offset - start:end]), start + end,
                _sha(raw[max(0, end - MARK_BYTES):end]))

    def newest_event_in_tail(self, nbytes: int = TAIL_BYTES
                             ) -> tuple[dict[str, Any] | None, int, str]:
        """newest_event_after for the last nbytes, with no mark to start from."""
        found = self._read_tail(nbytes)
        if found is None:
            return None, 0, _sha(b"")
        start, raw = found
        end = raw.rfind(b"\n") + 1
        mark = _sha(raw[max(0, end - MARK_BYTES):end])
        cut = raw.find(b"\n") + 1 if start > 0 else 0
        return _newest_event(raw[cut:end]), start + end, mark

    def degraded_pending(self) -> bool:
        return self.marker.exists()

    def clear_degraded(self) -> None:
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            return
        fsync_dir(self.marker.parent)

    def cut_torn_tail(self, good_size: int) -> None:
        """fsck --repair: drop the bytes after the last whole line."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, good_size)
            os.fsync(fd)
        finally:
            os.close(fd)


def parse(raw: bytes) -> JournalRead:
    out = JournalRead()
    end = raw.rfind(b"\n") + 1
    out.good_size = end
    out.torn_tail = len(raw) - end
    for n, line in enumerate(raw[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            out.bad_lines.append(n)
            continue
        if not isinstance(doc, dict) or doc.get("t") not in LINE_TYPES:
            out.bad_lines.append(n)
            continue
        out.entries.append(doc)
    return out


def event_entry(row: dict[str, Any], uid: str) -> dict[str, Any]:
    """A journal line for one event row (as state.db stores it)."""
    detail = row.get("detail")
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except ValueError:
            pass
    return {
        "t": "event", "uid": uid, "id": row.get("id"), "at": row["at"],
        "action": row["action"], "release_id": row.get("release_id"),
        "from_release_id": row.get("from_release_id"), "actor": row["actor"],
        "reason": row.get("reason"), "outcome": row["outcome"], "detail": detail,
    }


def release_entry(release_id: int, **fields: Any) -> dict[str, Any]:
    return {"t": "release", "id": release_id, **fields}


def _newest_event(raw: bytes) -> dict[str, Any] | None:
    """The last whole event line in raw, decoding from the end and only lines that
    can be one (release lines, with their reports, are the big ones)."""
    for line in reversed(raw.split(b"\n")):
        if b'"event"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("t") == "event" and doc.get("uid"):
            return doc
    return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _touch_durably(path: Path) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o664)
    try:
        os.fchmod(fd, 0o664)  # the store's shared files are group-writable (access.py)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
