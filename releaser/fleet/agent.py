"""`releaser agent`: keep this host on its channel's release.

Each poll (every poll_s, jittered +-20 % so a fleet does not poll in step): conditional
GET of channels/CHANNEL.json -> verify signature (trusted keys only), channel, seq (not
below the highest accepted, persisted in ROOT/fleet/agent.json) and expiry -> apply():
  live already has it       -> applied, nothing done
  held locally (slot/archive, good) -> the local O(1) rollback path, no download
  otherwise                 -> verified manifest -> a zstd patch against a release held
                               here (delta.py), else the full file, into [fleet]
                               download_dir while hashing -> `releaser publish`'s own pipeline
-> write status/CHANNEL/HOST_ID.json (the ack).
A pointer with a wave plan goes through rollout.step() every poll instead (it gates on
the earlier waves' acks, then calls apply(); or sends the host back on an abort), and,
with [[analysis.prometheus]] configured, bake.py analyses the release once it is live
here (polls then come as often as its queries are due).

Invariants:
- The live release changes only through publish/rollback (the store lock, gates on the
  host's own copy, swap, post-swap check, verify window, hooks); on any error or
  refusal live stays as it was: the last good release keeps serving.
- Nothing from the bucket is executed; everything is verified before use.
- A pointer that was refused, rejected or auto-reverted here is not retried until the
  channel moves (a new pointer); a transient failure (bucket, lock) is retried next poll.
- The download folder ([fleet] download_dir, default ROOT.incoming) holds at most the download in progress; it is emptied at start and
  before every download, so a SIGKILL leaves nothing behind once the agent runs again.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import sdnotify, signals
from ..analysis_record import iso
from ..errors import EXIT_GATE, EXIT_IO, EXIT_OK, LockBusy, ReleaserError
from . import bake as bakes
from . import delta, layout, local, rollout, settings, transfer
from .ack import Ack, AgentState
from .agentmetrics import AgentMetrics
from .envelope import open_signed
from .errors import BucketError, NotFound, Refused
from .manifest import KIND as MANIFEST_KIND
from .manifest import Manifest
from .pointer import KIND as POINTER_KIND
from .pointer import Pointer

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("releaser.agent")

HEARTBEAT_S = 300.0  # re-write the ack this often even when nothing changed


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Transient(Exception):
    """Try again next poll (bucket unreachable, store busy)."""


class Agent:
    def __init__(self, config: Config, *, actor: str = "agent") -> None:
        self.config = config
        self.fleet = settings.fleet_of(config)
        self.channel = settings.channel_of(self.fleet, None)
        self.host_id = settings.host_id(self.fleet)
        self.trusted = settings.trusted_keys(self.fleet)
        self.actor = actor
        self.bucket = settings.open_bucket(self.fleet)
        self.dir = Path(config.root) / "fleet"
        self.incoming = settings.download_dir(config)
        self.state_path = self.dir / "agent.json"
        local.ensure_store(config, actor)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._clean_incoming()
        self.state = AgentState.load(self.state_path, self.channel)
        # the first poll reads the whole pointer: the last run may have stopped mid-apply
        # (SIGKILL, power loss), and its expiry must be checked again (one GET per start)
        self.state.etag = None
        self.metrics = AgentMetrics()
        self.bucket.on_request(self.metrics.count_request)
        self.metrics.applied_seq.set(self.state.applied_seq)
        self.current: Pointer | None = None  # the last verified channel pointer
        self._current_digest = ""
        self._last_ack_at = 0.0
        self.bake: bakes.Bake | None = None  # the analysis of a rollout's release here
        self.deadline = time.monotonic() + 3600  # watchdog: pings while before this

    # -- one poll ------------------------------------------------------------

    def poll(self) -> Ack | None:
        """One poll. Returns the ack written (None: nothing to report)."""
        self.arm(120 + 2 * self.fleet.poll_s)
        name = layout.channel(self.channel)
        try:
            obj = self.bucket.get_if_changed(name, self.state.etag)
        except NotFound:
            return self._report_idle(["channel has no pointer yet"])
        except BucketError as exc:
            return self._poll_error(exc)
        if obj is None:  # 304: the pointer we verified before
            self._check_expiry()
            if self.current is not None and self.current.plan is not None:
                return rollout.step(self, self.current, self._current_digest)
            return self._report_idle([])
        what = self.bucket.url(name)
        try:
            signed = open_signed(obj.body, self.trusted, what, POINTER_KIND)
            pointer = Pointer.from_signed(signed, what)
            self.metrics.pointer_expired.set(1 if pointer.expired() else 0)
            pointer.check(self.channel, self.state.highest_seq, self.state.highest_digest,
                          signed.digest, what)
        except Refused as exc:
            self.state.etag = obj.etag
            self._save()
            return self._ack("rejected", None, [exc.message], target=None)
        self.current, self._current_digest = pointer, signed.digest
        self.state.etag = obj.etag
        if pointer.plan is not None:  # a wave rollout: gate on earlier waves' acks
            self.state.highest_seq, self.state.highest_digest = pointer.seq, signed.digest
            self._save()
            return rollout.step(self, pointer, signed.digest)
        self.bake = None  # no wave plan: no bake analysis (nor faster polls for one)
        if signed.digest == self.state.finished:
            return self._report_idle([])
        self.state.highest_seq, self.state.highest_digest = pointer.seq, signed.digest
        self._save()
        return self.apply(pointer, signed.digest)

    # -- the apply step --------------------------------------------------------

    def apply(self, pointer: Pointer, digest: str) -> Ack:
        """Bring this host to the pointer's release; the ack says how it went."""
        target = pointer.release_sha256
        self._ack("applying", pointer, [], target=target, digest=digest)
        downloaded = 0
        try:
            if local.live_sha256(self.config) == target:
                state, reasons = "applied", []
            else:
                state, reasons, downloaded = self._apply_release(pointer, digest)
        except Transient as exc:
            self.metrics.poll_errors.inc()
            log.warning("%s: %s; will retry next poll", self.channel, exc)
            self.state.etag = None  # re-read the pointer next time
            self._save()
            return self._ack("applying", pointer, [str(exc)], target=target, digest=digest)
        except Refused as exc:
            state, reasons = "rejected", [exc.message]
        except ReleaserError as exc:  # gates, post-swap check, no target...
            state, reasons = "rejected", [exc.message]
        if state == "applied":
            self.state.applied_seq = pointer.seq
            self.metrics.applied_seq.set(pointer.seq)
        self.state.finished = digest
        self._save()
        level = logging.INFO if state == "applied" else logging.WARNING
        log.log(level, "channel %s seq %d (%s): %s%s", self.channel, pointer.seq,
                target[:12], state, f": {'; '.join(reasons)}" if reasons else "")
        return self._ack(state, pointer, reasons, target=target, digest=digest,
                         downloaded=downloaded)

    def _apply_release(self, pointer: Pointer, digest: str) -> tuple[str, list[str], int]:
        reason = f"fleet {self.channel} seq {pointer.seq} ({pointer.action} by {pointer.actor})"
        held = local.held(self.config, pointer.release_sha256)
        if held is not None and held.auto_reverted:
            return "reverted", [f"the monitor auto-reverted release {held.release_id} with "
                                "this content here before; not applying it again"], 0
        if held is not None and held.status == "good" and held.on_disk:
            self._locally(local.switch_to, held.release_id, actor=self.actor, reason=reason)
            return "applied", [], 0
        manifest = self._manifest(pointer)
        downloaded = 0

        def counted(n: int) -> None:
            nonlocal downloaded
            downloaded += n
            self.metrics.download_bytes.inc(n)
            self.arm(120)

        self._clean_incoming()
        try:
            # a patch against a release held here, else (None) the full file
            path = delta.fetch(self.config, self.bucket, manifest, self.incoming,
                               on_bytes=counted) or transfer.download(
                self.bucket, manifest.file, self.incoming, sha256=manifest.sha256,
                size=manifest.size, compressed_sha256=manifest.compressed_sha256,
                compressed_size=manifest.compressed_size, on_bytes=counted)
        except BucketError as exc:
            raise Transient(exc.message) from None
        finally:
            self.state.downloaded_total += downloaded
        try:
            self.arm(600 + manifest.size / 20e6)
            result = self._locally(local.publish, path, actor=self.actor,
                                   note=f"{reason}: {pointer.note or manifest.note or ''}")
        finally:
            path.unlink(missing_ok=True)
        outcome = result.get("outcome")
        if outcome == "published":
            return "applied", [], downloaded
        state = "reverted" if outcome == "reverted" else "rejected"
        return state, list(result.get("reasons") or [outcome]), downloaded

    def _locally(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(self.config, *args, **kwargs)
        except LockBusy as exc:
            raise Transient(exc.message) from None
        except ReleaserError as exc:
            report = exc.report
            if hasattr(report, "as_dict"):
                return report.as_dict() | {"reasons": [exc.message, *report.reasons]}
            raise

    def _manifest(self, pointer: Pointer) -> Manifest:
        name = layout.manifest(pointer.manifest)
        try:
            obj = self.bucket.get(name)
        except NotFound:
            raise Refused(f"{self.bucket.url(name)}: manifest missing") from None
        except BucketError as exc:
            raise Transient(exc.message) from None
        what = self.bucket.url(name)
        manifest = Manifest.from_signed(
            open_signed(obj.body, self.trusted, what, MANIFEST_KIND), pointer.manifest, what)
        if manifest.sha256 != pointer.release_sha256:
            raise Refused(f"{what}: release {manifest.sha256[:12]} is not the pointer's "
                          f"{pointer.release_sha256[:12]}")
        return manifest

    # -- reporting -------------------------------------------------------------

    def _report_idle(self, reasons: list[str]) -> Ack | None:
        """Nothing new from the bucket: notice a local auto-revert; heartbeat."""
        last = self.state.last
        live = local.live_sha256(self.config)
        if (last.get("state") == "applied" and last.get("target_sha256")
                and live != last["target_sha256"]):
            held = local.held(self.config, last["target_sha256"])
            if held is not None and held.auto_reverted:
                return self._ack("reverted", self.current,
                                 [f"the monitor auto-reverted release {held.release_id}"],
                                 target=last["target_sha256"], digest=last.get("pointer"))
        news = bool(reasons) and reasons != last.get("reasons")
        if time.monotonic() - self._last_ack_at < HEARTBEAT_S and not news:
            return None
        if not last:
            return self._ack("applied", None, reasons, target=None)
        return self._ack(last["state"], self.current, reasons or last.get("reasons", []),
                         target=last.get("target_sha256"), digest=last.get("pointer"),
                         seq=last.get("seq"))

    def _check_expiry(self) -> None:
        expired = self.current is not None and self.current.expired()
        self.metrics.pointer_expired.set(1 if expired else 0)
        if expired:
            log.error("channel %s pointer seq %d expired at %s: still serving the current "
                      "release; the pointer must be re-signed", self.channel,
                      self.current.seq, self.current.expires)  # type: ignore[union-attr]

    def _poll_error(self, exc: ReleaserError) -> None:
        self.metrics.poll_errors.inc()
        log.warning("poll %s: %s; still serving the current release", self.channel,
                    exc.message)
        return None

    def healthy_at(self, target: str) -> float:
        """Since when (time.time()) `target` has been live here; persisted, so a
        restarted agent keeps it (judge() measures bakes from it)."""
        if self.state.healthy_sha != target or self.state.healthy_at is None:
            self.state.healthy_sha, self.state.healthy_at = target, time.time()
            self._save()
        return self.state.healthy_at

    def _ack(self, state: str, pointer: Pointer | None, reasons: list[str], *,
             target: str | None, digest: str | None = None, downloaded: int = 0,
             seq: int | None = None) -> Ack:
        live = local.live_sha256(self.config)
        if live != self.state.healthy_sha:
            self.state.healthy_sha = self.state.healthy_at = None
        since = (iso(self.healthy_at(target)) if state == "applied" and target is not None
                 and live == target else None)
        ack = Ack(host_id=self.host_id, channel=self.channel, state=state,
                  seq=pointer.seq if pointer else seq, pointer=digest, target_sha256=target,
                  applied_sha256=live,
                  applied_seq=self.state.applied_seq, reasons=reasons, last_seen=_now(),
                  bytes_downloaded=downloaded,
                  bytes_downloaded_total=self.state.downloaded_total,
                  healthy_since=since,
                  analysis=bakes.record_for(self, target, live=live == target))
        self.state.last = asdict(ack)
        self._save()
        try:
            self.bucket.put(layout.status(self.channel, self.host_id), ack.body())
            self._last_ack_at = time.monotonic()
        except BucketError as exc:
            log.warning("could not write the ack: %s", exc.message)
        return ack

    def _save(self) -> None:
        self.state.save(self.state_path)

    def _clean_incoming(self) -> None:
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)

    # -- long-running ----------------------------------------------------------

    def arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Poll until stop is set. once: one poll; exit 0 applied, 1 rejected or
        reverted, 5 the bucket could not be read or the apply must be retried."""
        ready = False
        errors = self.metrics.poll_errors
        while not stop.is_set():
            before = errors._value.get()
            try:
                self.poll()
            except ReleaserError as exc:
                errors.inc()
                log.error("poll failed: %s", exc.message)
            if not ready:
                sdnotify.notify("READY=1")
                ready = True
            sdnotify.notify(f"STATUS=channel {self.channel}: "
                            f"{self.state.last.get('state', 'starting')} seq "
                            f"{self.state.applied_seq}")
            if once:
                if errors._value.get() > before:
                    return EXIT_IO
                return EXIT_OK if self.state.last.get("state") == "applied" else EXIT_GATE
            wait = self.fleet.poll_s * random.uniform(0.8, 1.2)
            if self.bake is not None:  # a bake analysis: poll when its queries are due
                wait = min(wait, max(0.05, self.bake.next_due_in()))
            self.arm(wait + 120)
            stop.wait(wait)
        return EXIT_OK


def run_agent(config: Config, *, once: bool = False, announce: Any = None) -> int:
    agent = Agent(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        sdnotify.notify("STOPPING=1")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signals.first_only(on_signal))
    server = agent.metrics.serve(agent.fleet.metrics_listen)
    if announce is not None:
        where = f", metrics on {server}" if server else ""
        announce(f"agent {agent.host_id}: channel {agent.channel} at {agent.fleet.url}{where}")
    wd = sdnotify.watchdog_interval_s()
    if wd:
        def ping() -> None:
            while not stop.wait(wd):  # wd is already half of WatchdogSec
                if time.monotonic() < agent.deadline:
                    sdnotify.notify("WATCHDOG=1")
                else:
                    log.error("a poll overran its time budget: withholding the watchdog ping")
        threading.Thread(target=ping, name="releaser-agent-watchdog", daemon=True).start()
    return agent.run(stop, once=once)
