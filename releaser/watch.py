"""`releaser watch`: publish every database dropped into the inbox folder.

Flow: watchdog events (inotify, or polling with --polling) and a start-up scan
note candidate files -> the main loop publishes nothing itself; it waits until
a file's size and mtime have been stable for settle_s and puts it on a queue ->
one worker thread publishes it through publish.publish (the same pipeline and
lock as `releaser publish`) -> the file moves to inbox/done/ or inbox/rejected/
with NAME.reason.json beside it.

A handler error is logged and the file is set aside; it never stops the
watcher. What happens to one settled file (a busy lock: later, not a
rejection; temporary failures retried with a doubling delay; a file replaced
under the same name meanwhile left in place and queued again) is
inbox_publish.py's, whose InboxPublisher the Watcher inherits.
SIGTERM / SIGINT stop the observer, let the current publish finish, and exit 0.
done/ and rejected/ are pruned at start and hourly ([watch] keep_done_days,
keep_rejected_days; inbox_prune.py).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import access, sdnotify, session, signals
from .config import Config
from .errors import UsageError
from .inbox_prune import prune_folder
from .inbox_publish import DONE, REJECTED, Identity, InboxPublisher

log = logging.getLogger("releaser.watch")

IGNORED_SUFFIXES = ("-journal", "-wal", "-shm", ".reason.json")
RESCAN_S = 30.0  # safety net for missed events (inotify queue overflow)
PRUNE_EVERY_S = 3600.0  # done/ and rejected/ are pruned at start and then hourly
DAY_S = 86400.0
ARRIVAL_EVENTS = (EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED)

ResultFn = Callable[[dict[str, Any]], None]


def is_candidate(name: str) -> bool:
    """Dot-files (temp files of a writer) and SQLite side files are never releases."""
    return bool(name) and not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


@dataclass
class _Pending:
    sig: tuple[int, int] | None = None  # (size, mtime_ns) at the last look
    since: float = 0.0  # when sig last changed (monotonic)
    not_before: float = 0.0  # lock busy: not again before this


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == EVENT_TYPE_MOVED:
            self.watcher.note(Path(os.fsdecode(event.dest_path)))
        elif event.event_type in ARRIVAL_EVENTS:
            self.watcher.note(Path(os.fsdecode(event.src_path)))


class Watcher(InboxPublisher):
    def __init__(self, config: Config, inbox: Path, *, polling: bool = False,
                 actor: str = "watch", on_result: ResultFn | None = None) -> None:
        self.config = config
        self.inbox = inbox.absolute()
        self.settle_s = config.watch.settle_s
        self.polling = polling
        self.actor = actor
        self.on_result = on_result
        self.stop_event = threading.Event()
        self.processed = 0
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._busy: set[Path] = set()  # queued or being published
        self._stuck: dict[Path, tuple[int, int]] = {}  # could not be moved away: skip
        # temporary failures so far of the file now at path: (its identity, tries)
        self._transient: dict[Path, tuple[Identity | None, int]] = {}
        self._queue: queue.Queue[Path | None] = queue.Queue()

    # -- set-up -------------------------------------------------------------

    def prepare(self) -> None:
        """Check the store and make the inbox folders (usage errors, exit 2)."""
        with session.open_store(self.config) as ctx:
            if ctx.store.is_inside(self.inbox):
                raise UsageError(f"{self.inbox}: the inbox is inside the releaser store "
                                 f"({ctx.store.root}); use a folder outside it")
        if not self.inbox.parent.is_dir():
            # a typo in --inbox or [watch] inbox must not build a tree nobody drops into
            raise UsageError(f"{self.inbox.parent}: no such folder for the inbox "
                             f"{self.inbox.name}/; check --inbox or [watch] inbox (watch "
                             "creates the inbox folder itself, not its parents)")
        try:
            self.inbox.mkdir(exist_ok=True)
            for d in (self.inbox / DONE, self.inbox / REJECTED):
                _shared_subfolder(self.inbox, d)
        except OSError as exc:
            raise UsageError(f"{exc.filename}: cannot create the inbox folder: "
                             f"{exc.strerror}") from None

    # -- arrivals -----------------------------------------------------------

    def note(self, path: Path) -> None:
        """An event or the scan saw path; it waits in pending until it settles."""
        if path.parent != self.inbox or not is_candidate(path.name):
            return
        with self._lock:
            if path not in self._busy:
                self._pending.setdefault(path, _Pending())

    def scan(self) -> None:
        try:
            entries = list(os.scandir(self.inbox))
        except OSError as exc:
            log.error("%s: cannot list the inbox: %s", self.inbox, exc.strerror)
            return
        for entry in entries:
            self.note(Path(entry.path))

    def settle(self) -> None:
        """Queue every pending file whose size and mtime have not changed for settle_s."""
        now = time.monotonic()
        with self._lock:
            items = list(self._pending.items())
        for path, p in items:
            try:
                st = os.stat(path)
            except OSError:
                with self._lock:
                    self._pending.pop(path, None)  # moved away or deleted before it settled
                continue
            if not stat.S_ISREG(st.st_mode):
                with self._lock:
                    self._pending.pop(path, None)
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._stuck.get(path) == sig:
                with self._lock:
                    self._pending.pop(path, None)
                continue
            if sig != p.sig:
                p.sig, p.since = sig, now
                continue
            if now - p.since >= self.settle_s and now >= p.not_before:
                with self._lock:
                    self._pending.pop(path, None)
                    self._busy.add(path)
                self._queue.put(path)

    # -- the worker -----------------------------------------------------------

    def _work(self) -> None:
        while True:
            path = self._queue.get()
            if path is None:
                return
            delay: float | None = None
            try:
                delay = self.process(path)
            except Exception:  # noqa: BLE001 - one bad file must not stop the watcher
                log.exception("%s: unexpected error while publishing", path)
                self._finish(path, REJECTED, {"outcome": "error", "release_id": None,
                                              "reasons": ["internal error; see the log"]})
            finally:
                with self._lock:
                    self._busy.discard(path)
                    # events for path were ignored while it was busy: whatever sits there
                    # now (a retry, a new build dropped under the same name, a file that
                    # could not be moved) goes back to pending; settle() skips stuck ones
                    if os.path.lexists(path):
                        now = time.monotonic()
                        self._pending[path] = _Pending(
                            sig=None, since=now, not_before=now + (delay or 0.0))

    # -- main loop ------------------------------------------------------------

    def run(self) -> None:
        """Watch until stop() or SIGTERM/SIGINT; the current publish is finished first."""
        self.prepare()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signals.first_only(lambda *_: self.stop_event.set()))
        poll_s = min(1.0, max(0.1, self.settle_s / 2))
        observer = PollingObserver(timeout=poll_s) if self.polling else Observer()
        # the identity of the folder the observer is about to follow, taken before READY=1
        # and the "watching" line: a replacement after either is then seen at the next
        # tick, not left to the 30 s rescan
        inbox_id = _folder_id(self.inbox)
        observer.schedule(_Handler(self), str(self.inbox), recursive=False)
        worker = threading.Thread(target=self._work, name="watch-worker", daemon=True)
        observer.start()
        worker.start()
        self.scan()  # after start: a file arriving meanwhile is seen by one or the other
        kind = "polling" if self.polling else "inotify"
        log.info("watching %s (%s, settle %g s)", self.inbox, kind, self.settle_s)
        sdnotify.notify("READY=1", f"STATUS=watching {self.inbox} ({kind})")
        tick = min(0.25, max(0.05, self.settle_s / 3))
        next_scan = time.monotonic() + RESCAN_S
        next_prune = time.monotonic()
        ping_s = sdnotify.watchdog_interval_s()  # WatchdogSec= in the unit, if set
        next_ping = time.monotonic()
        try:
            while not self.stop_event.wait(tick):
                if ping_s and time.monotonic() >= next_ping:
                    sdnotify.notify("WATCHDOG=1")
                    next_ping = time.monotonic() + ping_s
                if (now_id := _folder_id(self.inbox)) != inbox_id and now_id is not None:
                    # moved away and recreated: watch the new folder, with its done/ and
                    # rejected/ (the old watch follows the old inode)
                    log.warning("%s: the inbox folder was replaced; watching the new one",
                                self.inbox)
                    inbox_id = now_id
                    self._recreated(observer)
                    next_scan = 0.0
                if time.monotonic() >= next_scan:
                    self.scan()
                    next_scan = time.monotonic() + RESCAN_S
                if time.monotonic() >= next_prune:
                    self.prune()
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                self.settle()
        finally:
            sdnotify.notify("STOPPING=1")
            log.info("stopping: finishing the current publish")
            # watchdog 7 logs a spurious "called when the thread is inactive" error on stop
            logging.getLogger("watchdog").setLevel(logging.CRITICAL)
            observer.stop()
            self._queue.put(None)
            worker.join()
            observer.join(timeout=5)

    def stop(self) -> None:
        self.stop_event.set()

    def prune(self) -> int:
        """Delete processed files older than [watch] keep_done_days / keep_rejected_days."""
        removed = 0
        for folder, days in ((DONE, self.config.watch.keep_done_days),
                             (REJECTED, self.config.watch.keep_rejected_days)):
            if days > 0:
                removed += prune_folder(self.inbox / folder, time.time() - days * DAY_S)
        return removed

    def _recreated(self, observer: Any) -> None:
        for d in (self.inbox / DONE, self.inbox / REJECTED):
            try:
                d.mkdir(exist_ok=True)
            except OSError as exc:
                log.error("%s: cannot create it: %s", d, exc.strerror)
        try:
            observer.unschedule_all()
            observer.schedule(_Handler(self), str(self.inbox), recursive=False)
        except OSError as exc:
            log.error("%s: cannot watch it: %s; rescanning every %g s instead", self.inbox,
                      exc.strerror or exc, RESCAN_S)


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _shared_subfolder(inbox: Path, folder: Path) -> None:
    """done/ and rejected/ belong to the inbox's group with its group rights (setgid),
    so builders can remove and resubmit their own files: made 2775 for a group-writable
    inbox, whatever the umask. An existing folder we do not own is left as it is."""
    st = os.stat(inbox)
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if mode & stat.S_IWGRP:
        mode |= stat.S_ISGID
    folder.mkdir(exist_ok=True)
    fst = os.stat(folder)
    if fst.st_uid != os.geteuid():
        return
    if fst.st_gid != st.st_gid:
        try:
            os.chown(folder, -1, st.st_gid)  # our own folder: to a group we are in
        except PermissionError:
            pass  # not a member of the inbox's group: keep ours
    access.set_mode(folder, mode | stat.S_IRWXU)
