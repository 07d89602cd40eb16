"""Sidecar manifests: release-<id>.json beside every release-<id>.db in a slot or the archive.

A manifest describes its release file without state.db: id, sha256, size, the
file identity when placed (inode, mtime_ns), source, note, created and
published times, status (good, bad, rejected, aborted) with its reason, and
the [[checks]] values the change gates compare a candidate against. Rollback
and status work from them when state.db is unusable, and `fsck --repair`
rebuilds state.db from them and the journal.

Invariants:
- written like a release file: a temp name (STAGING_PREFIX, so a leftover is
  cleaned up), fsync, rename, fsync of the folder; never modified in place;
- written before its release file gets its release name (Store.place), so a
  visible release file always has its manifest;
- it follows its release file: the store writes, copies and removes manifests
  in the same functions that place, archive, restore, clear and prune files;
- when copies disagree (a crash between two renames), the newest `updated_at` wins.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .files import fsync_dir, write_all

FORMAT = "releaser-manifest/1"
MANIFEST_RE = re.compile(r"^release-(\d+)\.json$")
TMP_PREFIX = ".staging-"  # store.STAGING_PREFIX: leftovers are removed by reconcile

FIELDS = ("release_id", "sha256", "size", "inode", "mtime_ns", "source", "note",
          "created_at", "published_at", "status", "status_reason", "check_values",
          "updated_at")


class ManifestError(Exception):
    """A manifest that cannot be read or is not one."""


def manifest_name(release_id: int) -> str:
    return f"release-{release_id}.json"


def manifest_id_of(name: str) -> int | None:
    m = MANIFEST_RE.match(name)
    return int(m.group(1)) if m else None


def check_values(report: dict[str, Any] | None) -> dict[str, float]:
    """The [[checks]] values of a gate report (what Release.check_values returns)."""
    if not report:
        return {}
    return {
        c["name"]: c["observed"]
        for c in report.get("checks", [])
        if c.get("kind") == "check" and isinstance(c.get("observed"), int | float)
    }


def from_row(row: dict[str, Any], updated_at: str) -> dict[str, Any]:
    """A manifest document for a releases row (report as stored: JSON text or dict)."""
    report = row.get("report")
    if isinstance(report, str):
        report = json.loads(report) if report else None
    return {
        "format": FORMAT,
        "release_id": row["id"],
        "sha256": row["sha256"],
        "size": row["size"],
        "inode": row.get("inode"),
        "mtime_ns": row.get("mtime_ns"),
        "source": row.get("source"),
        "note": row.get("note"),
        "created_at": row.get("created_at"),
        "published_at": row.get("published_at"),
        "status": row["status"],
        "status_reason": row.get("status_reason"),
        "check_values": check_values(report),
        "updated_at": updated_at,
    }


def write(folder: Path, doc: dict[str, Any]) -> Path:
    """Write doc as folder/release-<id>.json: temp name, fsync, rename, fsync folder."""
    final = folder / manifest_name(int(doc["release_id"]))
    tmp = folder / f"{TMP_PREFIX}manifest-{os.getpid()}-{os.urandom(4).hex()}"
    data = (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, 0o644)  # readable by whoever may read the release (umask aside)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)
    return final


def read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a releaser manifest")
    rid = manifest_id_of(path.name)
    if doc.get("release_id") != rid or not isinstance(doc.get("sha256"), str) \
            or not isinstance(doc.get("size"), int) or not isinstance(doc.get("status"), str):
        raise ManifestError(f"{path}: manifest fields are missing or do not match its name")
    return doc


def scan(folders: list[Path]) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Every readable manifest in these folders, newest copy per release id; and problems."""
    found: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            rid = manifest_id_of(name)
            if rid is None:
                continue
            try:
                doc = read(folder / name)
            except FileNotFoundError:
                continue
            except ManifestError as exc:
                problems.append(str(exc))
                continue
            old = found.get(rid)
            if old is None or str(doc.get("updated_at") or "") > str(old.get("updated_at") or ""):
                found[rid] = doc
    return found, problems


def remove(folder: Path, release_id: int) -> bool:
    """Remove a manifest if it is there; quietly, like the release file it goes with."""
    try:
        os.unlink(folder / manifest_name(release_id))
    except OSError:
        return False
    return True
