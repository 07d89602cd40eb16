"""Telling others about an outcome: hook environments and webhook notifications.

Neither ever changes an outcome: announce() logs a notification it could not
start and returns; delivery runs in the background (notify.py). notify (and with
it http.client, ssl, email) is imported only when a webhook is configured.
"""

from __future__ import annotations

import logging

from . import hooks
from .session import Context

log = logging.getLogger("releaser.announce")


def hook_env(ctx: Context, action: str, *, release_id: int | None, sha256: str | None,
         slot: str | None, previous: int | None = None,
         reason: str | None = None) -> dict[str, str]:
    return hooks.release_env(action=action, live_path=ctx.config.live_path,
                             release_id=release_id, sha256=sha256, slot=slot,
                             previous_release_id=previous, reason=reason)


def announce(ctx: Context, action: str, outcome: str, *, release_id: int | None,
              sha256: str | None = None, slot: str | None = None, source: str | None = None,
              from_release_id: int | None = None, reasons: list[str] | None = None) -> None:
    """Webhook notification in the background; a failure is logged, never raised."""
    if not ctx.config.notify.webhook:
        return
    from . import notify

    try:
        notify.send(ctx.config.notify, notify.payload(
            action, outcome, live_path=str(ctx.config.live_path), reasons=reasons or [],
            release={"id": release_id, "sha256": sha256, "slot": slot, "source": source,
                     "from_release_id": from_release_id},
            live_release_id=ctx.store.live_release_id()))
    except Exception:  # noqa: BLE001 - a notification never changes an outcome
        log.exception("could not send the %s notification", action)
