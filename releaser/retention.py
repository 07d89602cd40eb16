"""What a publish keeps once its release is recorded: archive pruning, history compaction.

Both run after the new release is recorded, under the store lock publish holds:
- prune_archive keeps the newest keep_releases good releases plus whatever sits
  in a slot (live and idle are never pruned); bad releases use no place;
- compact_history ([history] keep_events) drops the oldest events and the release
  rows none of the kept ones names and that are not on disk, journals what it
  removed, and rotates the journal to a checkpoint past journal_max_bytes
  (journal_compact.py). Its cost is the rows removed, so it is flat per publish.
A failed journal rotation leaves the old journal whole; the next publish retries.
"""

from __future__ import annotations

import logging

from . import journal_compact
from .journal import Journal
from .session import Context
from .store import SLOTS

log = logging.getLogger("releaser.publish")


def compact_history(ctx: Context) -> tuple[int, int]:
    """[history] keep_events: drop the oldest events (and release rows none of the kept
    ones names, not on disk); a cost of the rows removed, so flat per publish. The
    journal is rotated to a checkpoint past journal_max_bytes (journal_compact.py)."""
    keep = ctx.config.history.keep_events
    if keep <= 0:
        return 0, 0
    on_disk = {rid for s in SLOTS for rid in ctx.store.slot_files(s)}
    on_disk |= ctx.store.archived_ids()
    removed = ctx.state.compact(keep, on_disk)
    if removed != (0, 0):
        log.info("history: compacted %d events and %d release rows (keep_events = %d)",
                 *removed, keep)
        journal = Journal(ctx.store.root)
        if journal_compact.due(journal, ctx.config.history.journal_max_bytes):
            try:
                journal_compact.rotate(journal)
            except OSError as exc:  # the old journal stands whole; the next publish retries
                log.warning("%s: cannot rotate the journal: %s", journal.path, exc)
    return removed


def prune_archive(ctx: Context) -> list[int]:
    """Keep the newest keep_releases good releases plus live and idle; bad ones use no place."""
    store, state = ctx.store, ctx.state
    keep = {rid for s in SLOTS for rid in store.slot_files(s)}
    keep.update(state.newest_published_good(ctx.config.keep_releases))
    return store.prune_archive(keep)
