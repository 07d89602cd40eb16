"""[monitor] and [watch]: the two long-running services' settings.

Frozen dataclasses only; each checks its own values in __post_init__ and
raises ValueError naming the key. Defaults are the documented ones (a check
every five minutes, a 5 s settle for the inbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, eq=False, repr=False)
class Monitor:
    """[monitor]: how often the live release is checked, and when it reverts."""

    interval_s: float = 300.0
    # full sha256 of the live file every N checks (cheap stat comparison otherwise)
    hash_every: int = 12
    # PRAGMA quick_check every N checks
    integrity_every: int = 12
    failures_before_revert: int = 2
    metrics_listen: str = "127.0.0.1:9464"
    misfire_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        for name in ("hash_every", "integrity_every", "failures_before_revert"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        host, _, port = self.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f'metrics_listen must be "HOST:PORT", got "{self.metrics_listen}"')


@dataclass(frozen=True, eq=False, repr=False)
class Watch:
    """[watch]: the inbox folder `releaser watch` publishes from."""

    inbox: Path | None = None
    settle_s: float = 5.0
    polling: bool = False
    # the store lock was busy: try the same file again after this long
    lock_retry_s: float = 5.0
    # processed files (and their NAME.reason.json) older than this are deleted; 0 keeps all
    keep_done_days: float = 30.0
    keep_rejected_days: float = 30.0

    def __post_init__(self) -> None:
        if self.settle_s < 0:
            raise ValueError(f"settle_s must be >= 0, got {self.settle_s}")
        if self.lock_retry_s <= 0:
            raise ValueError(f"lock_retry_s must be > 0, got {self.lock_retry_s}")
        for key in ("keep_done_days", "keep_rejected_days"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 keeps everything), got "
                                 f"{getattr(self, key)}")
