"""Pruning the watcher's done/ and rejected/ folders ([watch] keep_done_days and
keep_rejected_days).

Invariants: only regular files directly in the folder are deleted; a processed
file and its NAME.reason.json go together, aged by the reason file (written when
the file was processed); nothing is deleted before its age passes the limit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("releaser.watch")


def prune_folder(folder: Path, cutoff: float) -> int:
    """Delete each processed file whose NAME.reason.json was written before cutoff (a
    Unix time), with that reason file. A file without one (the watcher stopped between
    the move and the reason) counts from its last change: a rename keeps the build's
    own mtime, so its ctime says when it was moved here."""
    try:
        entries = {e.name: e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)}
    except OSError as exc:
        log.warning("%s: cannot list it to prune old files: %s", folder, exc.strerror)
        return 0
    doomed: list[str] = []
    for name, entry in entries.items():
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if name.endswith(".reason.json"):
            if st.st_mtime < cutoff:
                doomed.append(name)
                base = name[: -len(".reason.json")]
                if base in entries:
                    doomed.append(base)
        elif f"{name}.reason.json" not in entries and max(st.st_mtime, st.st_ctime) < cutoff:
            doomed.append(name)
    removed = 0
    for name in doomed:
        try:
            os.unlink(folder / name)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot delete it: %s", folder / name, exc.strerror)
    if removed:
        log.info("pruned %d old files from %s", removed, folder)
    return removed
