"""[verify], [hooks], [notify]: the HTTP endpoints and commands releaser calls.

Frozen dataclasses only. An HTTP target always has a per-attempt deadline and
bounded retries; a command is an argv list (never a shell string) with a time
limit. Each checks its own values in __post_init__ and raises ValueError
naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, eq=False, repr=False)
class HttpTarget:
    """An HTTP endpoint called with a per-attempt deadline and retries."""

    url: str
    timeout_s: float = 5.0
    retries: int = 3
    # first retry after this long (webhooks double it each time)
    retry_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f'url must start with http:// or https://, got "{self.url}"')
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ValueError("retries and retry_delay_s must be >= 0")


@dataclass(frozen=True, eq=False, repr=False)
class HttpProbe(HttpTarget):
    """[[verify.http]]: the app answers expect_status (and the body checks) when healthy."""

    expect_status: int = 200
    # dotted path into a JSON body, and the value it must equal (optional)
    json_field: str | None = None
    json_value: str | int | float | bool | None = None
    body_contains: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.json_value is not None and self.json_field is None:
            raise ValueError("json_value needs json_field (the dotted path it applies to)")


@dataclass(frozen=True, eq=False, repr=False)
class Command:
    """An argv list run without a shell, under a time limit."""

    argv: tuple[str, ...]
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("argv must not be empty")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


class ExecProbe(Command):
    """[[verify.exec]]: exit 0 means the app is healthy on the new release."""


@dataclass(frozen=True, eq=False, repr=False)
class Verify:
    """[verify]: the app's own health probes, run for window_s after a swap."""

    window_s: float = 0.0
    # one round of all probes every interval_s inside the window
    interval_s: float = 5.0
    http: tuple[HttpProbe, ...] = ()
    exec: tuple[ExecProbe, ...] = ()

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {self.window_s}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


def verify_enabled(cfg: Verify) -> bool:
    """Any [[verify.http]] or [[verify.exec]] probe (publish imports verify only then)."""
    return bool(cfg.http or cfg.exec)


class Hook(Command):
    """[hooks]: run at a step of publish/rollback with RELEASER_* in the environment."""


@dataclass(frozen=True, eq=False, repr=False)
class Hooks:
    """[hooks]: commands run at each step of publish and rollback."""

    before_swap: tuple[Hook, ...] = ()
    after_swap: tuple[Hook, ...] = ()
    after_rollback: tuple[Hook, ...] = ()
    on_reject: tuple[Hook, ...] = ()


@dataclass(frozen=True, eq=False, repr=False)
class Webhook(HttpTarget):
    """[[notify.webhook]]: a JSON POST for each event that matters."""

    # which actions to send (reject, publish, rollback, auto-revert,
    # fleet-rollout-aborted, fleet-rollout-paused); empty means all
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        # fleet-rollout-*: sent by agents (releaser/fleet/rollout.py)
        unknown = sorted(set(self.events) - {"reject", "publish", "rollback", "auto-revert",
                                             "fleet-rollout-aborted", "fleet-rollout-paused"})
        if unknown:
            raise ValueError(f"events: unknown action {unknown[0]!r} (known: reject, publish, "
                             "rollback, auto-revert, fleet-rollout-aborted, "
                             "fleet-rollout-paused)")


@dataclass(frozen=True, eq=False, repr=False)
class Notify:
    """[notify]: where webhooks are sent."""

    webhook: tuple[Webhook, ...] = ()
