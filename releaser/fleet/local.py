"""The agent's view of the local store: the one place the fleet calls the single-host
verbs (the same publish and O(1) rollback `releaser publish`/`rollback` run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True)
class Held:
    release_id: int
    status: str  # good | bad | ...
    on_disk: bool
    auto_reverted: bool


def ensure_store(config: Config, actor: str) -> None:
    from ..recover import init
    from ..store import Store

    if not Store(config.root, config.live_path).exists():
        init(config, actor=actor)


def live_sha256(config: Config) -> str | None:
    """The recorded sha256 of the live release (cheap: no stale-reader scan)."""
    from ..session import open_store

    with open_store(config) as ctx:
        rid = ctx.store.live_release_id()
        rel = ctx.state.release(rid) if rid is not None else None
        return rel.sha256 if rel is not None else None


def live_release_id(config: Config) -> int | None:
    from ..session import open_store

    with open_store(config) as ctx:
        return ctx.store.live_release_id()


def held(config: Config, sha256: str) -> Held | None:
    """The newest local release with this content, if the store has one."""
    from ..session import open_store
    from ..views import releases

    for rel in releases(config):  # newest first
        if rel["sha256"] == sha256:
            with open_store(config) as ctx:
                reverted = ctx.state.auto_reverted_from(rel["release_id"])
            return Held(rel["release_id"], rel["recorded_status"], rel["on_disk"], reverted)
    return None


def publish(config: Config, path: Path, *, actor: str, note: str | None) -> dict[str, Any]:
    """`releaser publish` on a verified download. Raises ReleaserError like it."""
    from ..publish import publish as publish_verb

    return publish_verb(config, path, actor=actor, note=note, wait_s=60.0).as_dict()


def switch_to(config: Config, release_id: int, *, actor: str, reason: str) -> dict[str, Any]:
    """The local O(1) rollback path to a release this host already holds."""
    from ..rollback import rollback

    return rollback(config, actor=actor, to=release_id, reason=reason, wait_s=60.0).as_dict()


def auto_revert(config: Config, release_id: int, *, actor: str, reasons: list[str],
                detail: dict[str, Any]) -> dict[str, Any] | None:
    """The monitor's auto-revert of live release_id (marked bad, back to the previous
    good one); None when no good release passes its check (live kept). Raises LockBusy
    like it, and rollback.LiveChanged when release_id is no longer live."""
    from ..rollback import revert_live

    result = revert_live(config, actor=actor, reasons=reasons, expect_live=release_id,
                         detail=detail, wait_s=10.0)
    return None if result is None else result.as_dict()
