"""The command line: a thin click layer over releaser.release.

Library errors (ReleaserError) become one line on stderr and their exit code;
anything unexpected is exit 5 with a hint to rerun with --debug for the traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import click

from . import __version__, release
from .config import Config, load_config
from .errors import EXIT_IO, ReleaserError
from .gates import GateReport
from .log import setup_logging

PROGRESS_MIN_BYTES = 64 << 20  # a progress bar only for copies long enough to watch

EXIT_CODES_HELP = """\b
Exit codes:
  0  ok
  1  a gate or health check failed (nothing changed)
  2  usage or config error
  3  another operation holds the lock (after --wait)
  4  nothing to roll back to
  5  I/O or internal error, live untouched
"""


class Settings:
    def __init__(self, config_path: str | None, root: str | None, live: str | None,
                 debug: bool) -> None:
        self.config_path, self.root, self.live, self.debug = config_path, root, live, debug
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, root=self.root, live=self.live)
        return self._config


class ReleaserGroup(click.Group):
    """Turns library errors into one-line click errors with documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReleaserError as exc:
            if _debug(ctx):
                raise
            raise _click_error(exc.message, exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            if _debug(ctx):
                raise
            where = exc.filename or "releaser"
            raise _click_error(f"{where}: {exc.strerror or exc}", EXIT_IO) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 5
            if _debug(ctx):
                raise
            raise _click_error(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                "traceback)", EXIT_IO) from None


def _debug(ctx: click.Context) -> bool:
    settings = ctx.obj
    return bool(getattr(settings, "debug", False)) or "--debug" in sys.argv


def _click_error(message: str, code: int) -> click.ClickException:
    err = click.ClickException(message)
    err.exit_code = code
    return err


def actor() -> str:
    return os.environ.get("RELEASER_ACTOR") or os.environ.get("SUDO_USER") or getpass.getuser()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
wait_option = click.option(
    "--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
    metavar="SECONDS", help="Wait this long for the store lock before giving up (exit 3).")


@click.group(cls=ReleaserGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=True), metavar="PATH",
              help="Config file. Default: $RELEASER_CONFIG, ./releaser.toml, "
                   "/etc/releaser/releaser.toml.")
@click.option("--root", type=click.Path(), metavar="DIR",
              help="Store root (overrides `root` in the config).")
@click.option("--live", type=click.Path(), metavar="PATH",
              help="Live symlink path (overrides `live_path` in the config).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(__version__, prog_name="releaser")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, root: str | None, live: str | None,
        debug: bool, verbose: bool) -> None:
    """Blue-green releases for SQLite databases.

    Validates a built database, stages it into the idle slot, swaps the live
    symlink atomically and keeps the previous release ready for an instant
    rollback.

    \b
    Examples:
      releaser init
      releaser publish output/tags.db --note "nightly build"
      releaser status
      releaser rollback --reason "bad categories"
      releaser history --limit 20 --json
    """
    setup_logging(debug=debug, verbose=verbose)
    ctx.obj = Settings(config_path, root, live, debug)


def _settings() -> Settings:
    return click.get_current_context().find_object(Settings)  # type: ignore[return-value]


# -- init ------------------------------------------------------------------


@cli.command()
@json_option
def init(as_json: bool) -> None:
    """Create the store; adopt an existing file at live_path as release 1.

    Adoption keeps the file's inode (a hard link into a slot) and puts a
    symlink in its place in one rename, so a running app is not disturbed.
    Running init again changes nothing.

    \b
    Examples:
      releaser --config /etc/releaser/releaser.toml init
      releaser --root ./var/releaser --live ./var/app/tags.db init
    """
    result = release.init(_settings().config, actor=actor())
    if as_json:
        emit_json(result)
        return
    outcome = result["outcome"]
    if outcome == "adopted":
        click.echo(f"adopted {result['live_path']} as release {result['release_id']}; "
                   f"it is now a symlink into {result['root']}/slots")
        for w in result.get("warnings", []):
            click.echo(f"warning: the adopted release does not pass: {w}", err=True)
    elif outcome == "already-initialised":
        click.echo(f"already initialised: live is release {result['release_id']}")
    else:
        click.echo(f"initialised store at {result['root']}; no live release yet "
                   f"(publish one to create {result['live_path']})")


# -- validate --------------------------------------------------------------


@cli.command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@json_option
def validate(db: Path, strict: bool, as_json: bool) -> None:
    """Run the gates on DB without publishing anything.

    Changes are compared with the live release when there is one.

    \b
    Examples:
      releaser validate output/tags.db
      releaser validate output/tags.db --strict --json
    """
    report = release.validate(_settings().config, db)
    ok = report.passed(strict)
    if as_json:
        emit_json({"ok": ok, "path": str(db), "checks": report.as_dict()["checks"]})
    else:
        _print_report(report)
    if not ok:
        first = report.blocking(strict)[0]
        raise _click_error(f"{db}: does not pass: {first.reason()}", 1)
    if not as_json:
        click.echo(f"{db}: passes all gates")


# -- publish ---------------------------------------------------------------


@cli.command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--note", help="A note stored with the release (shown in history).")
@click.option("--dry-run", is_flag=True, help="Stage and run the gates, then discard.")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@wait_option
@json_option
def publish(db: Path, note: str | None, dry_run: bool, strict: bool, wait_s: float,
            as_json: bool) -> None:
    """Validate DB, stage it into the idle slot and make it live.

    The gates run on the staged copy, never the source. After the swap the
    release is checked again through the live path; if that fails the
    previous release is put back and the exit code is 1.

    \b
    Examples:
      releaser publish output/tags.db
      releaser publish output/tags.db --note "weekly rebuild" --wait 60
      releaser publish output/tags.db --dry-run --json
    """
    config = _settings().config
    size = db.stat().st_size if db.is_file() else 0
    bar_cm: AbstractContextManager[Any] = nullcontext(None)
    if sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES and not as_json:
        bar_cm = click.progressbar(length=size, label="staging", file=sys.stderr)
    with bar_cm as bar:
        progress: Callable[[int], None] | None = bar.update if bar is not None else None
        try:
            result = release.publish(config, db, actor=actor(), note=note, dry_run=dry_run,
                                     strict=strict, wait_s=wait_s, progress=progress)
        except ReleaserError as exc:
            if isinstance(exc.report, release.PublishResult):
                if as_json:
                    emit_json(exc.report.as_dict())
                elif exc.report.report is not None:
                    _print_report(exc.report.report)
            raise
    if as_json:
        emit_json(result.as_dict())
        return
    if result.report is not None:
        _print_report(result.report)
    if result.outcome == "validated":
        click.echo(f"dry run: {db} passes all gates; nothing was published")
        return
    prev = result.previous_release_id
    click.echo(
        f"published release {result.release_id} to slot {result.slot} "
        f"(sha256 {result.sha256[:12] if result.sha256 else '?'}…) in "
        f"{sum(result.timings_ms.values()) / 1000:.2f} s")
    if prev is not None:
        click.echo(f"previous release {prev} stays ready: `releaser rollback` puts it back")


def _print_report(report: GateReport) -> None:
    for r in report.results:
        observed = "" if r.observed is None else (
            f"{r.observed:.6g}" if isinstance(r.observed, float) else str(r.observed))
        line = f"  {r.outcome:<5} {r.kind:<12} {r.name:<20} {observed:>14}  {r.duration_ms:8.1f} ms"
        if r.outcome != "pass" and r.detail:
            line += f"  {r.detail}"
        click.echo(line)


# -- rollback --------------------------------------------------------------


@cli.command()
@click.option("--to", "to", metavar="RELEASE_ID", help="Go back to this release (see history).")
@click.option("--reason", help="Why (recorded in history).")
@wait_option
@json_option
def rollback(to: str | None, reason: str | None, wait_s: float, as_json: bool) -> None:
    """Put the previous good release back, in constant time.

    Without --to, goes back to the release that was live before the current
    one. The target gets a structural check first (header, schema, probes)
    whose cost does not depend on the database size.

    \b
    Examples:
      releaser rollback --reason "categories look wrong"
      releaser rollback --to 12
    """
    target = release.parse_release_id(to) if to is not None else None
    result = release.rollback(_settings().config, actor=actor(), to=target, reason=reason,
                              wait_s=wait_s)
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(f"rolled back to release {result.release_id} (slot {result.slot}, sha256 "
               f"{result.sha256[:12]}…) from release {result.from_release_id} in "
               f"{result.duration_ms:.1f} ms")


# -- status, history, check --------------------------------------------------


@cli.command()
@json_option
def status(as_json: bool) -> None:
    """Show the live and idle releases, the last health check and the lock.

    \b
    Examples:
      releaser status
      releaser status --json | jq .live.release_id
    """
    doc = release.status(_settings().config)
    if as_json:
        emit_json(doc)
        return
    live, idle = doc["live"], doc["idle"]
    click.echo(f"live path: {doc['live_path']}")
    if live["release_id"] is None:
        click.echo("live:      none")
    else:
        click.echo(f"live:      release {live['release_id']} in {live['slot']} "
                   f"({live['status']}), sha256 {live['sha256']}, published {live['published_at']}")
    if idle["release_id"] is None:
        click.echo(f"idle:      {idle['slot']} (empty)")
    else:
        click.echo(f"idle:      release {idle['release_id']} in {idle['slot']} "
                   f"({idle['status']}), sha256 {idle['sha256']}")
    target = doc["rollback_target"]
    click.echo(f"rollback:  {'to release ' + str(target) if target else 'nothing to roll back to'}")
    check_doc = doc["last_check"]
    if check_doc:
        state_word = "healthy" if check_doc["ok"] else "UNHEALTHY"
        click.echo(f"last check: {check_doc['at']} {state_word} ({check_doc['actor']})")
        for reason in check_doc["reasons"]:
            click.echo(f"  {reason}")
    else:
        click.echo("last check: never")
    if doc["lock"]:
        lk = doc["lock"]
        click.echo(f"lock:      held by pid {lk['pid']} ({lk['command']}) since {lk['since']}")
    for problem in doc["problems"]:
        click.echo(f"problem:   {problem}")


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many events, newest first.")
@json_option
def history(limit: int, as_json: bool) -> None:
    """Show what happened: publishes, rejects, rollbacks, auto-reverts.

    \b
    Examples:
      releaser history
      releaser history --limit 100 --json
    """
    events = release.history(_settings().config, limit)
    if as_json:
        emit_json(events)
        return
    if not events:
        click.echo("no events yet")
    for e in events:
        rel = f"release {e['release_id']}" if e["release_id"] is not None else "-"
        frm = f" (from {e['from_release_id']})" if e["from_release_id"] is not None else ""
        reason = f"  {e['reason']}" if e["reason"] else ""
        click.echo(f"{e['at']}  {e['action']:<11} {e['outcome']:<11} {rel}{frm}  "
                   f"by {e['actor']}{reason}")


@cli.command()
@click.option("--hash", "full_hash", is_flag=True,
              help="Also compare the full sha256 of the live file (reads it all).")
@click.option("--no-integrity", is_flag=True, help="Skip PRAGMA quick_check (reads it all).")
@json_option
def check(full_hash: bool, no_integrity: bool, as_json: bool) -> None:
    """Health-check the live release; exit 1 when it is unhealthy.

    Checks that the live file is the recorded release, runs quick_check and
    the probes against their budgets. The result shows in `status`.

    \b
    Examples:
      releaser check
      releaser check --hash --json
    """
    report = release.check(_settings().config, actor=actor(), full_hash=full_hash,
                           integrity=not no_integrity)
    if as_json:
        emit_json(report.as_dict())
    else:
        for reason in report.reasons:
            click.echo(f"  {reason}")
    if not report.ok:
        raise _click_error(
            f"{_settings().config.live_path}: unhealthy: {report.reasons[0]}", 1)
    if not as_json:
        click.echo(f"healthy: release {report.release_id} ({report.duration_ms:.1f} ms)")


def main() -> None:
    cli(prog_name="releaser")


if __name__ == "__main__":  # pragma: no cover
    main()
