"""Webhook notifications: a JSON POST per reject, publish, rollback and auto-revert.

Delivery runs in a background thread per event so a slow or dead receiver
never delays a publish or a rollback (the store lock is not held for it), and
a failed delivery is logged, never raised: it cannot change an outcome.

Each attempt has one overall deadline of timeout_s (connect, send, status line;
see http_request), so a receiver that answers slowly cannot hold a delivery
longer than retries x timeout plus the delays. A 2xx status is a delivery: the
body is not read, so a receiver that stalls after its status is not sent the
event twice. The threads are daemons; an atexit handler waits for deliveries in
flight, at most until their own worst case and never over EXIT_WAIT_MAX_S, so
a short-lived CLI process neither loses a notification nor hangs on one.

Payload:
    {"action": "publish", "outcome": "published",
     "release": {"id", "sha256", "slot", "source", "from_release_id"},
     "reasons": [...], "host": "...", "at": "2024-...Z", "live_path": "...",
     "live_release_id": 7}

A publish reverted by its post-swap check or verification is sent as
action "auto-revert", outcome "reverted" (release = the bad one).
"""

from __future__ import annotations

import atexit
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from .config_calls import Notify, Webhook
from .httpclient import NoAnswer, http_request
from .state import utcnow

log = logging.getLogger("releaser.notify")

ACTIONS = ("reject", "publish", "rollback", "auto-revert")
# at exit, wait at most this long in all for deliveries still in flight
EXIT_WAIT_MAX_S = 60.0
# thread -> monotonic time by which its delivery has given up (all attempts)
_pending: dict[threading.Thread, float] = {}
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
        "at": utcnow(),
        "live_path": live_path,
        "live_release_id": live_release_id,
    }


def worst_case_s(hook: Webhook) -> float:
    """The longest one delivery to hook can take (every attempt to its deadline)."""
    delays = sum(hook.retry_delay_s * 2 ** i for i in range(hook.retries))
    return (hook.retries + 1) * hook.timeout_s + delays


def send(cfg: Notify, body: dict[str, Any]) -> list[threading.Thread]:
    """Start delivering body to every webhook that wants its action; returns at once."""
    threads = []
    for hook in cfg.webhook:
        if hook.events and body["action"] not in hook.events:
            continue
        t = threading.Thread(target=_deliver_tracked, args=(hook, body),
                             name=f"notify-{body['action']}", daemon=True)
        with _pending_lock:
            _pending[t] = time.monotonic() + worst_case_s(hook) + 1.0
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


@atexit.register
def flush_at_exit() -> None:
    """Before the process ends: let deliveries in flight finish, within a bound.
    (Registered with atexit; call it before an os._exit, which skips atexit.)"""
    with _pending_lock:
        if not _pending:
            return
        n, until = len(_pending), max(_pending.values())
    wait_s = min(max(until - time.monotonic(), 0.0), EXIT_WAIT_MAX_S)
    log.info("waiting up to %.1f s for %d notification(s) in flight", wait_s, n)
    if not flush(wait_s):
        with _pending_lock:
            left = len(_pending)
        log.error("exiting with %d notification(s) not delivered", left)


def _deliver_tracked(hook: Webhook, body: dict[str, Any]) -> None:
    try:
        deliver(hook, body)
    except Exception:  # noqa: BLE001 - a notification must never take anything down
        log.exception("notification to %s failed unexpectedly", hook.url)
    finally:
        with _pending_lock:
            _pending.pop(threading.current_thread(), None)


def deliver(hook: Webhook, body: dict[str, Any]) -> bool:
    """POST with retries (delay doubling from retry_delay_s); False when all failed.

    Each attempt ends within timeout_s; a 2xx status counts as delivered without
    reading the body (so a slow or broken body never causes a second delivery)."""
    data = json.dumps(body, default=str).encode()
    problem = ""
    for attempt in range(hook.retries + 1):
        if attempt:
            time.sleep(hook.retry_delay_s * 2 ** (attempt - 1))
        try:
            status, _ = http_request(
                hook.url, data=data, method="POST", timeout_s=hook.timeout_s,
                headers={"Content-Type": "application/json", "User-Agent": "releaser-notify"})
        except NoAnswer as exc:
            problem = str(exc)
        else:
            if 200 <= status < 300:
                log.info("notified %s of %s %s", hook.url, body["action"], body["outcome"])
                return True
            problem = f"HTTP {status}"
        log.info("notification to %s: attempt %d failed: %s", hook.url, attempt + 1, problem)
    log.error("could not notify %s of %s %s after %d attempts: %s", hook.url, body["action"],
              body["outcome"], hook.retries + 1, problem)
    return False
