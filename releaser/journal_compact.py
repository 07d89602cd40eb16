"""Keep journal.jsonl bounded when `[history] keep_events` compacts: rotate it to a checkpoint.

Compaction (state_counters.compact) removes old events and release rows from
state.db and journals what it did in one `{"t": "compaction", ...}` line: the
uids of the events removed (a few per publish), the release id floor and the
on-disk releases below it that stay, and the per action/outcome counts removed. A rebuild
(rebuild.collect) applies that line, so the journal and state.db always describe
the same record, and the metrics' totals survive a lost state.db.

Those lines alone do not stop the file growing: `rotate` rewrites the journal as
the record it describes, once it is over `[history] journal_max_bytes` (and twice
the last checkpoint, so a large kept history is not rewritten after every publish):

- the new file starts with a `{"t": "checkpoint", ...}` line: when, the counts
  compaction removed so far (`counters`), and the size and sha256 of the file it
  replaces; then one full `release` line per release row and the kept `event`
  lines, in order, each with its uid;
- it is written whole to a temp name, fsynced, and renamed over journal.jsonl
  (the folder fsynced): never rewritten in place; a crash leaves the old file or
  the new one, both complete;
- the file it replaces stays as journal.previous.jsonl (one generation, written
  anew the same way, not hard-linked: the journal may be another publisher's
  file), for inspection; nothing reads it;
- rebuild.collect on the new file gives the same releases, events and counters as
  on the old one, so `fsck --repair` rebuilds state.db from it and the manifests.

Caller holds the store lock (every journal writer does), and runs it after `sync`,
so no degraded line is waiting to be imported (a pending one defers the rotation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from . import rebuild
from .files import fsync_dir, write_new
from .journal import Journal, parse, release_entry
from .records import utcnow
from .store import STAGING_PREFIX

log = logging.getLogger("releaser.journal")

PREVIOUS_NAME = "journal.previous.jsonl"
# a checkpoint is only looked for in the journal's first this many bytes
CHECKPOINT_PEEK = 64 * 1024


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":"), default=str, ensure_ascii=False)
            + "\n").encode()


def checkpoint_bytes(journal: Journal) -> int:
    """The size of the record the journal's checkpoint line wrote (0: no checkpoint)."""
    try:
        with open(journal.path, "rb") as fh:
            first = fh.read(CHECKPOINT_PEEK).split(b"\n", 1)[0]
        doc = json.loads(first)
    except (OSError, ValueError):
        return 0
    if not isinstance(doc, dict) or doc.get("t") != "checkpoint":
        return 0
    return int(doc.get("snapshot_bytes") or 0)


def due(journal: Journal, max_bytes: int) -> bool:
    """Over max_bytes, and over twice what the last rotation wrote."""
    try:
        size = journal.path.stat().st_size
    except FileNotFoundError:
        return False
    return size > max_bytes and size > 2 * checkpoint_bytes(journal)


def rotate(journal: Journal) -> dict[str, Any] | None:
    """Rewrite the journal as a checkpoint of its record (see the module docstring).

    Returns the checkpoint line written, or None when a degraded line is pending."""
    if journal.degraded_pending():
        return None
    raw = journal.path.read_bytes()
    read = parse(raw)
    record = rebuild.collect(read.entries, {})
    body = bytearray()
    for rid, row in sorted(record.releases.items()):
        if rid in record.placeholders:
            continue  # known only by id: any rebuild makes the same placeholder again
        fields = {k: v for k, v in row.items() if k in rebuild.RELEASE_COLUMNS and k != "id"}
        if row.get("_updated_at"):
            fields["updated_at"] = row["_updated_at"]  # a newer manifest still wins
        body += _line(release_entry(rid, **fields))
    for event in record.events:
        body += _line(event)
    checkpoint = {
        "t": "checkpoint", "at": utcnow(), "counters": record.counters,
        "releases": len(record.releases) - len(record.placeholders),
        "events": len(record.events), "snapshot_bytes": len(body),
        "replaces": {"bytes": read.good_size,
                     "sha256": hashlib.sha256(raw[:read.good_size]).hexdigest()},
    }
    # the old bytes are written anew as journal.previous.jsonl, never hard-linked: the
    # journal may belong to another publisher (fs.protected_hardlinks refuses a link)
    previous = journal.path.with_name(PREVIOUS_NAME)
    # group-writable whatever the umask: every publisher appends (README "Users and permissions")
    write_new(previous, raw[:read.good_size], STAGING_PREFIX)
    write_new(journal.path, _line(checkpoint) + bytes(body), STAGING_PREFIX)
    fsync_dir(journal.path.parent)
    log.info("%s: rotated (%d bytes -> %d): a checkpoint of %d release(s) and %d event(s); "
             "the old file is %s", journal.path, len(raw), len(body), checkpoint["releases"],
             checkpoint["events"], PREVIOUS_NAME)
    return checkpoint
