"""The store on disk: two slots, the live symlink, the archive, the lock.

Layout under `root`:
    slots/blue/release-<id>.db     one release file per slot (two during a swap)
    slots/green/release-<id>.db
    archive/release-<id>.db        the other kept releases (keep_releases)
    state.db                       releases and events (see state.py)
    lock                           flock target; holds the holder's pid/command

A release file has exactly one name: in a slot or in the archive. It moves between
them by rename (move_release, the one place that moves a release, with any
its manifest release-<id>.json), never by hard link: the kernel's
fs.protected_hardlinks=1 refuses a link to another user's file, and publishers are
several users (README "Users and permissions"); a rename needs only write access to
the two folders, keeps the inode (open readers, recorded identity) and costs O(1).
The previous release leaves a slot only after the swap that replaces it succeeded.

Copying a candidate in is staging.py's job, the lock store_lock.py's (Store.lock
hands over to it); this module names, links, renames and removes. Rules every
function here keeps:
- a release file is never written after it is renamed into place (readers that
  opened it keep its inode); new content is a new file: temp name, fsync, rename;
- the live symlink changes only by os.replace of a fully-made symlink, followed
  by an fsync of its folder, so `live_path` always names a whole release;
- folders are made 2775 and the lock 0664 explicitly, whatever the umask (access.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import access, manifest, store_lock
from .errors import StoreIOError
from .files import fsync_dir, io_error, remove_quietly

if TYPE_CHECKING:
    from .staging import ProgressFn, Staged

SLOTS = ("blue", "green")
RELEASE_FILE_RE = re.compile(r"^release-(\d+)\.db$")
STAGING_PREFIX = ".staging-"
SWAP_TMP_INFIX = ".releaser-swap-"


def release_file_name(release_id: int) -> str:
    return f"release-{release_id}.db"


def release_id_of(path: Path | str) -> int | None:
    m = RELEASE_FILE_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class FileIdentity:
    """What stat says of a file: a cheap sign that it is the one recorded."""

    size: int
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns)


class Store:
    def __init__(self, root: Path, live_path: Path) -> None:
        # absolute (as spelled, not resolved): a relative root used from another working
        # directory, or written into the symlink, would name another place
        root, live_path = Path(os.path.abspath(root)), Path(os.path.abspath(live_path))
        self.root = root
        self.live_path = live_path
        self.slots_dir = root / "slots"
        self.archive_dir = root / "archive"
        self.state_path = root / "state.db"
        self.lock_path = root / "lock"
        # the record a manifest is written from (session.open_store: state.db's row);
        # None, or a release it does not know: the manifest already beside a file is carried
        self.manifest_source: Callable[[int], dict[str, Any] | None] | None = None

    # -- layout -----------------------------------------------------------

    def create(self) -> None:
        """Make (or repair) the folders with their modes, whatever the umask."""
        for d in (self.root, self.slots_dir, *(self.slot_dir(s) for s in SLOTS),
                  self.archive_dir):
            access.make_dir(d)
        if not self.live_path.parent.exists():
            access.make_dir(self.live_path.parent)
        if self.lock_path.exists():
            access.set_mode(self.lock_path, access.SHARED_FILE_MODE)

    def writable_paths(self) -> list[Path]:
        """What a publish, rollback or revert writes: checked before anything changes."""
        return [self.root, self.lock_path, self.state_path,
                *(self.slot_dir(s) for s in SLOTS), self.archive_dir, self.live_path.parent]

    def exists(self) -> bool:
        # not state.db: a store whose state.db is lost is still a store (statefile.py)
        return all(self.slot_dir(s).is_dir() for s in SLOTS)

    def slot_dir(self, slot: str) -> Path:
        return self.slots_dir / slot

    def slot_files(self, slot: str) -> dict[int, Path]:
        """Release files in a slot folder, by release id (normally one)."""
        out: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self.slot_dir(slot)))
        except OSError:
            return out
        for entry in entries:
            rid = release_id_of(entry.name)
            if rid is not None:
                out[rid] = Path(entry.path)
        return out

    def archive_file(self, release_id: int) -> Path:
        return self.archive_dir / release_file_name(release_id)

    def location_of(self, release_id: int) -> Path | None:
        """The release file, in a slot (preferred) or the archive; None when gone."""
        name = release_file_name(release_id)
        for folder in (*(self.slot_dir(s) for s in SLOTS), self.archive_dir):
            if os.path.lexists(folder / name):
                return folder / name
        return None

    def archived_ids(self) -> set[int]:
        try:
            names = os.listdir(self.archive_dir)
        except OSError:  # missing or broken archive: status must still answer
            return set()
        return {rid for n in names if (rid := release_id_of(n)) is not None}

    def is_inside(self, path: Path) -> bool:
        """True when path (resolved) is inside the store root."""
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    # -- the live symlink -------------------------------------------------

    def live_target(self) -> Path | None:
        """Where live_path points (absolute), or None when it is not a symlink."""
        try:
            target = os.readlink(self.live_path)
        except (FileNotFoundError, OSError):
            return None
        p = Path(target)
        return p if p.is_absolute() else (self.live_path.parent / p)

    def slot_of(self, path: Path | None) -> str | None:
        """The slot whose folder holds path, compared resolved: the same store reached
        through a symlinked parent or another spelling is still this store."""
        if path is None:
            return None
        parent = path.parent
        for slot in SLOTS:
            if parent == self.slot_dir(slot):
                return slot
        real = os.path.realpath(parent)
        for slot in SLOTS:
            if real == os.path.realpath(self.slot_dir(slot)):
                return slot
        return None

    def live_slot(self) -> str | None:
        return self.slot_of(self.live_target())

    def live_release_id(self) -> int | None:
        target = self.live_target()
        return release_id_of(target) if self.slot_of(target) else None

    def idle_slot(self) -> str:
        live = self.live_slot()
        return SLOTS[1] if live == SLOTS[0] else SLOTS[0]

    def swap(self, target: Path) -> None:
        """Point live_path at target atomically: make a symlink aside, rename it over."""
        tmp = self.live_path.parent / (
            f".{self.live_path.name}{SWAP_TMP_INFIX}{os.getpid()}-{os.urandom(4).hex()}"
        )
        try:
            os.symlink(target, tmp)
            os.replace(tmp, self.live_path)
            fsync_dir(self.live_path.parent)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp)
            raise StoreIOError(f"{self.live_path}: cannot swap the live symlink: {exc}") from None

    def points_at(self, target: Path) -> bool:
        """Does live_path name target now (compared resolved)?"""
        current = self.live_target()
        return current is not None and os.path.realpath(current) == os.path.realpath(target)

    def swap_back(self, previous_target: Path | None) -> None:
        """Put back what live_path named before a swap (nothing: remove live_path)."""
        if previous_target is not None:
            self.swap(previous_target)
        else:
            # first release ever: there was no live_path before, so there is none after
            self.live_path.unlink(missing_ok=True)
            fsync_dir(self.live_path.parent)

    # -- staging ----------------------------------------------------------

    def _staging_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}.db"

    def stage(self, source: Path, slot: str, progress: ProgressFn | None = None) -> Staged:
        """Copy source into slot under a temp name, hashing in the same pass (staging.py)."""
        from . import staging  # publish only: status and rollback never copy (nor hash)

        return staging.stage(source, self._staging_path(slot), slot, progress)

    def discard(self, staged: Staged) -> None:
        with suppress(StoreIOError):
            staged.durable()  # no thread left running on a file we delete
        remove_quietly(staged.path)

    def place(self, staged: Staged, release_id: int) -> Path:
        """Rename a staged file into its slot as release-<id>.db (beside the slot's
        previous release, which stays until the swap has succeeded)."""
        final = self.slot_dir(staged.slot) / release_file_name(release_id)
        staged.durable()  # the data is on disk before the file gets its release name
        self._carry_manifest(release_id, final.parent)  # ...and so is its manifest
        try:
            os.rename(staged.path, final)
            fsync_dir(final.parent)
        except OSError as exc:
            if not final.exists():
                manifest.remove(final.parent, release_id)
            raise io_error(final, exc) from None
        return final

    def move_release(self, release_id: int, folder: Path) -> Path:
        """Move a release into folder (a slot or the archive) by rename: O(1), whoever
        owns the file. The one place a release moves. Its manifest is written at the
        destination first and removed from the source last, so wherever the file is
        (even after a crash in between) its manifest is beside it. Raises StoreIOError
        when the release is nowhere or the rename fails."""
        final = folder / release_file_name(release_id)
        here = self.location_of(release_id)
        if here is None:
            raise StoreIOError(f"{final}: release {release_id} is in no slot and not archived")
        if here.parent == folder:
            return final
        self._carry_manifest(release_id, folder)
        try:
            if os.path.exists(final) and os.path.samefile(here, final):
                # a store from before renames: the archive held hard links of slot files
                # (rename(2) onto another link of the same file does nothing)
                os.unlink(here)
            else:
                os.rename(here, final)
            fsync_dir(folder)
            fsync_dir(here.parent)
        except OSError as exc:
            raise io_error(final, exc) from None
        manifest.remove(here.parent, release_id)
        return final

    def restore_from_archive(self, release_id: int, slot: str) -> Path:
        """Put an archived release into a slot (rename): O(1) whatever its size or owner."""
        return self.move_release(release_id, self.slot_dir(slot))

    def clear_slot(self, slot: str, keep: int) -> None:
        """Move release files other than `keep` from a slot into the archive."""
        for rid in self.slot_files(slot):
            if rid != keep:
                self.move_release(rid, self.archive_dir)

    def remove_release_files(self, release_id: int) -> None:
        """Remove a release that never went live from its slot and the archive."""
        paths = [p for s in SLOTS if (p := self.slot_files(s).get(release_id)) is not None]
        remove_quietly(*paths, self.archive_file(release_id))
        for folder in {p.parent for p in paths} | {self.archive_dir}:
            manifest.remove(folder, release_id)
            with suppress(OSError):
                fsync_dir(folder)  # so the removal survives a power loss

    def prune_archive(self, keep: set[int]) -> list[int]:
        removed = []
        for rid in sorted(self.archived_ids() - keep):
            remove_quietly(self.archive_file(rid))
            manifest.remove(self.archive_dir, rid)
            removed.append(rid)
        if removed:
            fsync_dir(self.archive_dir)
        return removed

    # -- manifests (manifest.py): written here only, beside their files ---------

    def manifest_folders(self) -> list[Path]:
        return [*(self.slot_dir(s) for s in SLOTS), self.archive_dir]

    def write_manifest(self, doc: dict[str, Any]) -> None:
        """(Re)write a release's manifest beside each of its files (state.py's hook)."""
        rid = int(doc["release_id"])
        for folder in self.manifest_folders():
            if (folder / release_file_name(rid)).exists():
                manifest.write(folder, doc)

    def manifest_doc(self, release_id: int) -> dict[str, Any] | None:
        """What a release's manifest says: from the record, else the newest copy on disk."""
        doc = self.manifest_source(release_id) if self.manifest_source else None
        if doc is not None:
            return doc
        return self.manifest_doc_on_disk(release_id)

    def manifest_doc_on_disk(self, release_id: int) -> dict[str, Any] | None:
        """The newest manifest copy of a release in the slots and the archive."""
        newest: dict[str, Any] | None = None
        for folder in self.manifest_folders():
            try:
                found = manifest.read(folder / manifest.manifest_name(release_id))
            except (FileNotFoundError, manifest.ManifestError):
                continue
            if newest is None or str(found.get("updated_at")) > str(newest.get("updated_at")):
                newest = found
        return newest

    def _carry_manifest(self, release_id: int, folder: Path) -> None:
        doc = self.manifest_doc(release_id)
        if doc is None:
            return
        try:
            manifest.write(folder, doc)
        except OSError as exc:
            raise io_error(folder / manifest.manifest_name(release_id), exc) from None

    def cleanup_leftovers(self) -> list[Path]:
        """Remove what an interrupted operation left: staging files, temp symlinks."""
        found: list[Path] = []
        for d in (*(self.slot_dir(s) for s in SLOTS), self.archive_dir):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            names = {entry.name for entry in entries}
            for entry in entries:
                if entry.name.startswith(STAGING_PREFIX):
                    found.append(Path(entry.path))
                # a manifest whose file never got its name (killed in place()) or was removed
                mid = manifest.manifest_id_of(entry.name)
                if mid is not None and release_file_name(mid) not in names:
                    found.append(Path(entry.path))
        prefix = f".{self.live_path.name}{SWAP_TMP_INFIX}"
        try:
            for entry in os.scandir(self.live_path.parent):
                if entry.name.startswith(prefix):
                    found.append(Path(entry.path))
        except OSError:
            pass
        for path in found:
            remove_quietly(path)
        return found

    # -- lock (store_lock.py) ----------------------------------------------

    def lock(self, command: str, wait_s: float = 0.0) -> AbstractContextManager[None]:
        """Exclusive flock on root/lock; records the holder for `status`."""
        return store_lock.hold(self.lock_path, self.root, self.writable_paths(), command,
                               wait_s)

    def lock_holder(self) -> dict[str, object] | None:
        """The recorded holder, if the lock is held now (store_lock.holder)."""
        return store_lock.holder(self.lock_path)
