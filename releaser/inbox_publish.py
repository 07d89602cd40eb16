"""Publish one settled inbox file, then file it under done/ or rejected/ with its reason.

InboxPublisher is the worker side of `releaser watch` (watch.Watcher inherits
it; it needs the watcher's config, actor, inbox, processed, _transient,
_stuck and on_result). process() publishes through publish.publish, the same
pipeline and lock as `releaser publish`, and never raises for a bad file:
- a busy store lock: try again after [watch] lock_retry_s, not a rejection;
- a temporary failure (source locked or changing, store I/O, state.db
  locked): retried with a doubling delay, up to TRANSIENT_ATTEMPTS tries, then
  rejected/ with the number of tries in the reason;
- anything else: done/ (published, unchanged) or rejected/, with
  NAME.reason.json (written by temp file, fsync, rename) beside it.
The file's identity (device, inode, size, mtime) is taken when its publish
starts; a file replaced under the same name meanwhile is left in place and
nothing is moved. A file that cannot be moved is skipped until it changes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from . import publish, sdnotify
from .config import Config
from .errors import EXIT_IO, GateFailed, LockBusy, ReleaserError, StoreIOError
from .results import PublishResult
from .state import utcnow

log = logging.getLogger("releaser.watch")

DONE, REJECTED = "done", "rejected"
# temporary failures (source locked or changing, store I/O): tries in all, and the
# longest delay between two (the delay starts at [watch] lock_retry_s and doubles)
TRANSIENT_ATTEMPTS = 6
TRANSIENT_MAX_DELAY_S = 300.0

Identity = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class InboxPublisher:
    """process() and what it needs; mixed into watch.Watcher."""

    config: Config
    actor: str
    inbox: Path
    processed: int
    _transient: dict[Path, tuple[Identity | None, int]]
    _stuck: dict[Path, tuple[int, int]]
    on_result: Callable[[dict[str, Any]], None] | None

    def process(self, path: Path) -> float | None:
        """Publish one settled file; the delay before a retry, or None when it is done."""
        ident = _identity(path)
        if ident is None:
            log.info("%s: gone before it could be published", path)
            return None
        sdnotify.notify(f"STATUS=publishing {path.name}")
        log.info("%s: publishing", path)
        doc: dict[str, Any]
        try:
            result = publish.publish(self.config, path, actor=self.actor,
                                     note=f"watch: {path.name}", wait_window=True)
        except LockBusy as exc:
            log.info("%s: %s; trying again in %g s", path, exc.message,
                     self.config.watch.lock_retry_s)
            sdnotify.notify(f"STATUS=waiting for the store lock ({path.name})")
            return self.config.watch.lock_retry_s
        except sqlite3.OperationalError as exc:
            # state.db locked or briefly unwritable: not the build's fault, try it later
            return self._transient_failure(path, ident, StoreIOError(
                f"{self.config.root / 'state.db'}: {exc}"))
        except (GateFailed, StoreIOError) as exc:
            if _is_transient(exc):
                return self._transient_failure(path, ident, exc)
            self._transient.pop(path, None)
            if not isinstance(exc, GateFailed):
                self._finish(path, REJECTED, {"outcome": "error", "release_id": None,
                                              "reasons": [exc.message],
                                              "exit_code": exc.exit_code}, ident)
                return None
            res = exc.report if isinstance(exc.report, PublishResult) else None
            doc = {"outcome": res.outcome if res else "rejected",
                   "release_id": res.release_id if res else None,
                   "reasons": (res.reasons if res and res.reasons else [exc.message]),
                   "warnings": res.warnings if res else [],
                   "sha256": res.sha256 if res else None, "exit_code": exc.exit_code}
            self._finish(path, REJECTED, doc, ident)
            return None
        except ReleaserError as exc:  # usage error: set aside with the reason
            self._transient.pop(path, None)
            self._finish(path, REJECTED, {"outcome": "error", "release_id": None,
                                          "reasons": [exc.message], "exit_code": exc.exit_code},
                         ident)
            return None
        self._transient.pop(path, None)
        # unchanged: the build is already live, which is what its author wanted
        folder = DONE if result.outcome in ("published", "unchanged") else REJECTED
        doc = {"outcome": result.outcome, "release_id": result.release_id,
               "reasons": result.reasons, "warnings": result.warnings,
               "sha256": result.sha256, "exit_code": 0}
        self._finish(path, folder, doc, ident)
        return None

    def _transient_failure(self, path: Path, ident: Identity, exc: ReleaserError) -> float | None:
        """Count a temporary failure: the delay before the next try, or reject at the limit."""
        seen, tries = self._transient.get(path, (None, 0))
        tries = tries + 1 if seen == ident else 1
        if tries < TRANSIENT_ATTEMPTS:
            self._transient[path] = (ident, tries)
            delay = min(self.config.watch.lock_retry_s * 2 ** (tries - 1), TRANSIENT_MAX_DELAY_S)
            log.warning("%s: temporary failure (try %d of %d): %s; trying again in %g s",
                        path, tries, TRANSIENT_ATTEMPTS, exc.message, delay)
            sdnotify.notify(f"STATUS=retrying {path.name} in {delay:g} s")
            return delay
        self._transient.pop(path, None)
        res = exc.report if isinstance(exc.report, PublishResult) else None
        self._finish(path, REJECTED, {
            "outcome": "error" if not isinstance(exc, GateFailed) else "rejected",
            "release_id": res.release_id if res else None,
            "reasons": [f"gave up after {tries} tries (temporary failure each time): "
                        f"{exc.message}"],
            "attempts": tries, "exit_code": exc.exit_code}, ident)
        return None

    def _finish(self, path: Path, folder: str, doc: dict[str, Any],
                ident: Identity | None = None) -> None:
        """Move the source aside, then write NAME.reason.json beside it.

        ident: the file's identity when its publish started. When the file now at
        path is another one (a new build dropped under the same name meanwhile) it is
        left alone: nothing moves, and the worker queues it again.
        """
        self.processed += 1
        doc = {"file": path.name, "source": str(path), **doc, "at": utcnow()}
        try:
            now = _identity(path)
            if ident is not None and now != ident:
                raise _Replaced
            (self.inbox / folder).mkdir(exist_ok=True)  # the inbox may have been recreated
            dest = _free_name(self.inbox / folder, path.name)
            os.rename(path, dest)
            if ident is not None and _identity(dest) != ident:
                # replaced between the check and the rename: put the new one back
                os.link(dest, path)
                os.unlink(dest)
                raise _Replaced
            doc["moved_to"] = str(dest)
            _write_json(dest.with_name(f"{dest.name}.reason.json"), doc)
        except _Replaced:
            log.warning("%s: a new file was dropped under this name while the previous one "
                        "was being published; it stays and is queued, nothing moved", path)
            doc["moved_to"] = None
            doc["replaced"] = True
        except OSError as exc:
            log.error("%s: cannot move it to %s/: %s; it stays and is skipped until it "
                      "changes", path, folder, exc.strerror or exc)
            with suppress(OSError):
                st = os.stat(path)
                self._stuck[path] = (st.st_size, st.st_mtime_ns)
            doc["moved_to"] = None
        level = logging.INFO if doc["outcome"] in ("published", "unchanged") else logging.WARNING
        log.log(level, "%s: %s%s", path.name, doc["outcome"],
                f": {doc['reasons'][0]}" if doc.get("reasons") else "")
        sdnotify.notify(f"STATUS=watching {self.inbox} ({self.processed} processed; last: "
                  f"{path.name} {doc['outcome']})")
        if self.on_result:
            try:
                self.on_result(doc)
            except Exception:  # noqa: BLE001 - reporting must not stop the worker
                log.exception("reporting the result of %s failed", path)


class _Replaced(Exception):
    """The file at the path is no longer the one that was published."""


def _is_transient(exc: ReleaserError) -> bool:
    """Worth another try later: the source was locked or changing, or store I/O failed."""
    if isinstance(exc, GateFailed):
        return exc.transient  # the source was locked or changing while it was copied
    return isinstance(exc, StoreIOError) and exc.exit_code == EXIT_IO


def _free_name(folder: Path, name: str) -> Path:
    """folder/name, or folder/name.2, .3... when an earlier file had the same name."""
    dest = folder / name
    n = 2
    while dest.exists() or dest.with_name(f"{dest.name}.reason.json").exists():
        dest = folder / f"{name}.{n}"
        n += 1
    return dest


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
