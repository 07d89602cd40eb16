"""Webhook notifications: a JSON POST per reject, publish, rollback and auto-revert.

Delivery runs in a background thread per event so a slow or dead receiver
never delays a publish or a rollback (the store lock is not held for it), and
a failed delivery is logged, never raised: it cannot change an outcome. The
threads are not daemons, so a short-lived CLI process still finishes its
deliveries (bounded by retries x timeout) before it exits.

Payload:
    {"action": "publish", "outcome": "published",
     "release": {"id", "sha256", "slot", "source", "from_release_id"},
     "reasons": [...], "host": "...", "at": "2024-...Z", "live_path": "...",
     "live_release_id": 7}

A publish reverted by its post-swap check or verification is sent as
action "auto-revert", outcome "reverted" (release = the bad one).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .config import Notify, Webhook

log = logging.getLogger("releaser.notify")

ACTIONS = ("reject", "publish", "rollback", "auto-revert")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_pending: set[threading.Thread] = set()
_pending_lock = threading.Lock()


def payload(action: str, outcome: str, *, release: dict[str, Any],
            reasons: Sequence[str] = (), live_path: str | None = None,
            live_release_id: int | None = None) -> dict[str, Any]:
    """release: the release the event is about (for a rollback, the one now live)."""
    return {
        "action": action,
        "outcome": outcome,
        "release": release,
        "reasons": list(reasons),
        "host": socket.gethostname(),
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "live_path": live_path,
        "live_release_id": live_release_id,
    }


def send(cfg: Notify, body: dict[str, Any]) -> list[threading.Thread]:
    """Start delivering body to every webhook that wants its action; returns at once."""
    threads = []
    for hook in cfg.webhook:
        if hook.events and body["action"] not in hook.events:
            continue
        t = threading.Thread(target=_deliver_tracked, args=(hook, body),
                             name=f"notify-{body['action']}", daemon=False)
        with _pending_lock:
            _pending.add(t)
        t.start()
        threads.append(t)
    return threads


def flush(timeout_s: float | None = None) -> bool:
    """Wait for deliveries in flight; True when none is left."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with _pending_lock:
            threads = list(_pending)
        if not threads:
            return True
        for t in threads:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            t.join(left)
        if deadline is not None and time.monotonic() >= deadline:
            with _pending_lock:
                return not _pending


def _deliver_tracked(hook: Webhook, body: dict[str, Any]) -> None:
    try:
        deliver(hook, body)
    except Exception:  # noqa: BLE001 - a notification must never take anything down
        log.exception("notification to %s failed unexpectedly", hook.url)
    finally:
        with _pending_lock:
            _pending.discard(threading.current_thread())


def deliver(hook: Webhook, body: dict[str, Any]) -> bool:
    """POST with retries (delay doubling from retry_delay_s); False when all failed."""
    data = json.dumps(body, default=str).encode()
    problem = ""
    for attempt in range(hook.retries + 1):
        if attempt:
            time.sleep(hook.retry_delay_s * 2 ** (attempt - 1))
        req = urllib.request.Request(
            hook.url, data=data, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "releaser-notify"})
        try:
            with _OPENER.open(req, timeout=hook.timeout_s) as resp:
                resp.read(1 << 16)
                log.info("notified %s of %s %s", hook.url, body["action"], body["outcome"])
                return True
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        log.info("notification to %s: attempt %d failed: %s", hook.url, attempt + 1, problem)
    log.error("could not notify %s of %s %s after %d attempts: %s", hook.url, body["action"],
              body["outcome"], hook.retries + 1, problem)
    return False
