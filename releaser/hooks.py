"""Run configured hook commands: argv lists (no shell), a timeout, release env vars.

Hooks are the operator's way to tell the app about a new release (for example
`systemctl reload prompt-scribe-app`, since readers keep the old file until
they reopen it). Only a failing `before_swap` hook changes an outcome (the
publish stops); every other hook failure is logged and reported as a warning.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import signals
from .config_calls import Hook

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("releaser.hooks")

OUTPUT_KEPT = 2000  # bytes of a hook's output kept for the log / error line
READ_GRACE_S = 0.5  # after the hook exited, how long its output may still take to arrive


@dataclass(frozen=True)
class HookResult:
    """How one hook command ended."""

    argv: tuple[str, ...]
    ok: bool
    returncode: int | None
    duration_ms: float
    output: str
    problem: str | None = None  # one line: why it failed

    def describe(self, kind: str) -> str:
        return f"{kind} hook {' '.join(self.argv)}: {self.problem}"


def release_env(*, action: str, live_path: Path, release_id: int | None,
                sha256: str | None, slot: str | None, previous_release_id: int | None = None,
                reason: str | None = None) -> dict[str, str]:
    """The environment variables that describe a release to a hook or verify command."""
    env = {
        "RELEASER_ACTION": action,
        "RELEASER_LIVE_PATH": str(live_path),
        "RELEASER_RELEASE_ID": "" if release_id is None else str(release_id),
        "RELEASER_SHA256": sha256 or "",
        "RELEASER_SLOT": slot or "",
        "RELEASER_PREVIOUS_RELEASE_ID": (
            "" if previous_release_id is None else str(previous_release_id)),
    }
    if reason:
        env["RELEASER_REASON"] = reason[:4000]
    return env


def run_command(argv: Sequence[str], *, timeout_s: float, env: dict[str, str]) -> HookResult:
    """Run argv in its own process group; its exit status decides.

    Output is read on a thread as it comes and only its last OUTPUT_KEPT bytes kept
    (a hook printing gigabytes costs no memory). A child the hook left in the
    background may hold the pipe open: once the hook itself exited, its status is the
    result and the reader is left to finish alone. On timeout, or when we are
    interrupted (Ctrl-C, SIGTERM), the whole group is killed: no hook outlives us.
    """
    # here, not at the top: publish and rollback without hooks never load subprocess
    import subprocess

    t0 = time.perf_counter()
    full_env = {**os.environ, **env}
    tail = bytearray()
    proc: subprocess.Popen[bytes] | None = None
    try:
        # a signal while the hook starts (its process may already run before Popen
        # returns; Thread.start waits for the thread) is held until proc is known, so
        # the group is killed below instead of outliving us
        with signals.deferred():
            try:
                proc = subprocess.Popen(
                    list(argv), env=full_env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                return HookResult(tuple(argv), False, None, _ms(t0), "",
                                  f"cannot run: {exc.strerror or exc}")
            assert proc.stdout is not None
            reader = threading.Thread(target=_drain, args=(proc.stdout, tail), daemon=True,
                                      name="releaser-hook-output")
            reader.start()
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        reader.join(timeout=1.0)  # a grandchild outside the group may still hold the pipe
        return HookResult(tuple(argv), False, proc.returncode, _ms(t0), _text(tail),
                          f"timed out after {timeout_s:g} s")
    except BaseException:
        if proc is not None:
            _kill_group(proc)  # interrupted: the hook must not outlive the command
        raise
    reader.join(timeout=READ_GRACE_S)
    text = _text(tail)
    if proc.returncode != 0:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        return HookResult(tuple(argv), False, proc.returncode, _ms(t0), text,
                          f"exit {proc.returncode}: {last[:300]}")
    return HookResult(tuple(argv), True, 0, _ms(t0), text)


def _drain(pipe: IO[bytes], tail: bytearray) -> None:
    """Read the hook's output to its end, keeping the last OUTPUT_KEPT bytes."""
    try:
        while chunk := pipe.read1(65536):
            tail += chunk
            if len(tail) > 2 * OUTPUT_KEPT:
                del tail[:-OUTPUT_KEPT]
    except (OSError, ValueError):
        pass
    finally:
        with suppress(OSError):
            pipe.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import subprocess

    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_hooks(kind: str, hooks: Sequence[Hook], env: dict[str, str], *,
              stop_on_failure: bool = False) -> list[HookResult]:
    """Run each hook of one kind in order; log each result.

    With stop_on_failure (before_swap) the first failure ends the run.
    """
    results = []
    for hook in hooks:
        res = run_command(hook.argv, timeout_s=hook.timeout_s,
                          env={**env, "RELEASER_HOOK": kind})
        results.append(res)
        if res.ok:
            log.info("%s hook %s ok (%.0f ms)", kind, " ".join(hook.argv), res.duration_ms)
        else:
            log.warning("%s", res.describe(kind))
            if res.output.strip():
                log.debug("%s hook output:\n%s", kind, res.output)
            if stop_on_failure:
                break
    return results


def failures(kind: str, results: Sequence[HookResult]) -> list[str]:
    return [r.describe(kind) for r in results if not r.ok]


def _text(tail: bytearray) -> str:
    return bytes(tail[-OUTPUT_KEPT:]).decode("utf-8", "replace")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
