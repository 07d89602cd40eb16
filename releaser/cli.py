"""The command line: a thin click layer over the verbs (recover, publish, rollback, views).

Library errors (ReleaserError) become one line on stderr and their exit code;
anything unexpected is exit 5 with a hint to rerun with --debug for the traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import sqlite3
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .errors import EXIT_IO, EXIT_USAGE, ReleaserError
from .log import setup_logging
from .signals import interrupt_on_signals

if TYPE_CHECKING:
    from .config import Config
    from .gates import GateReport

# Each command imports its verb (and the verb its dependencies) when it runs:
# `--help`, `status` and `rollback` load neither the diff engine, nor HTTP/TLS,
# nor prometheus_client, watchdog or APScheduler; `--help` and `--version` not
# even the config (tests/test_layout.py checks; `make bench` times start-up).

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
        self.json = False  # --json given, before or after the subcommand
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from .config import load_config  # not needed by --help and --version

            self._config = load_config(self.config_path, root=self.root, live=self.live)
        return self._config


# global options also accepted after the subcommand (`releaser status --config x`)
GLOBAL_VALUE_OPTIONS = ("--config", "--root", "--live")
GLOBAL_FLAGS = ("--debug", "-v", "--verbose")


class ReleaserGroup(click.Group):
    """Turns library errors into one-line click errors with documented exit codes, and
    takes the global options before or after the subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = self._hoist_global_options(ctx, args)
        return super().parse_args(ctx, args)

    def _hoist_global_options(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Move global options found after the subcommand in front of it. An option of
        the subcommand's own, and any option's value, stay where they are."""
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                return args
            if arg in GLOBAL_VALUE_OPTIONS:
                i += 2
            elif arg.startswith("-"):
                i += 1
            else:
                break
        ctx.meta["releaser.json"] = "--json" in (args[:args.index("--")] if "--" in args
                                                 else args)
        if i >= len(args) or args[i] not in self.commands:
            return args
        ctx.meta["releaser.command"] = name = args[i]
        cmd = self.commands[name]
        own = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        takes_value = {o for p in cmd.params if isinstance(p, click.Option)
                       and not p.is_flag and not p.count for o in p.opts}
        front, rest = list(args[:i]), [name]
        j = i + 1
        while j < len(args):
            arg = args[j]
            if arg == "--":
                rest += args[j:]
                break
            key = arg.split("=", 1)[0]
            if arg in takes_value:
                rest += args[j:j + 2]
                j += 2
                continue
            if key in GLOBAL_VALUE_OPTIONS and key not in own:
                take = 1 if "=" in arg else 2
                front += args[j:j + take]
                j += take
                continue
            if arg in GLOBAL_FLAGS and arg not in own:
                front.append(arg)
            else:
                rest.append(arg)
            j += 1
        return front + rest

    def invoke(self, ctx: click.Context) -> Any:
        """--json: the command's result (emit_json) is printed once it ended, as one
        envelope, or folded into the error envelope when it failed after all."""
        try:
            rv = self._invoke_mapped(ctx)
        except click.ClickException as exc:
            if _json_mode(ctx):
                _emit_json_error(ctx, exc)
            raise
        except (click.exceptions.Exit, SystemExit):
            _flush_json(ctx)
            raise
        _flush_json(ctx)
        return rv

    def _invoke_mapped(self, ctx: click.Context) -> Any:
        try:
            # any command: Ctrl-C, SIGTERM and SIGHUP end it with exit 130 and the truth
            # about live; the services (monitor, watch) stop cleanly on their own terms
            services = ctx.meta.get("releaser.command") in ("monitor", "watch")
            with nullcontext() if services else interrupt_on_signals():
                return super().invoke(ctx)
        except ReleaserError as exc:
            if _debug(ctx):
                raise
            raise _click_error(exc.message, exc.exit_code) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            # Ctrl-C, SIGTERM or SIGHUP: the pipeline already put live back as it was
            raise _click_error(_interrupted_message(ctx, exc), EXIT_INTERRUPTED) from None
        except sqlite3.Error as exc:
            # anything SQLite that escapes the gates is about state.db (e.g. locked)
            if _debug(ctx):
                raise
            from .statefile import BUSY_TIMEOUT_S, classify

            settings = ctx.find_object(Settings)
            where = Path(settings.config.root / "state.db" if settings else "state.db")
            problem = classify(where, exc, BUSY_TIMEOUT_S)
            raise _click_error(problem.message, problem.exit_code) from None
        except PermissionError as exc:
            # who may do what is configuration (README "Users and permissions"): exit 2
            if _debug(ctx):
                raise
            where = exc.filename or "releaser"
            raise _click_error(f"{where}: permission denied for user {getpass.getuser()}; "
                               'see README "Users and permissions"', EXIT_USAGE) from None
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


EXIT_INTERRUPTED = 130


def _interrupted_message(ctx: click.Context, exc: KeyboardInterrupt) -> str:
    """Say what is live now, read from the symlink itself: the truth, whatever was cut."""
    from .store import Store

    why = f"interrupted by {exc.args[0]}" if exc.args else "interrupted"
    try:
        config = ctx.find_object(Settings).config  # type: ignore[union-attr]
        live = Store(config.root, config.live_path).live_release_id()
    except Exception:  # noqa: BLE001 - the message must not fail
        return f"{why}; run `releaser status` to see what is live"
    where = f"live is release {live}" if live is not None else "nothing is live"
    return f"{why}; {where} ({config.live_path})"


def _debug(ctx: click.Context) -> bool:
    settings = ctx.obj
    return bool(getattr(settings, "debug", False)) or "--debug" in sys.argv


def one_line(text: str) -> str:
    """Errors and history stay one line each, whatever SQLite or a file name holds."""
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _click_error(message: str, code: int) -> click.ClickException:
    err = click.ClickException(one_line(message))
    err.exit_code = code
    return err


def actor() -> str:
    return os.environ.get("RELEASER_ACTOR") or os.environ.get("SUDO_USER") or getpass.getuser()


def emit_json(data: Any, outcome: str | None = None) -> None:
    """The command's --json result; printed as the one envelope (releaser.output:
    version, command, outcome, data) when the command ends, or inside the error
    envelope if it fails after all."""
    if outcome is None:
        outcome = data.get("outcome") if isinstance(data, dict) else None
    ctx = click.get_current_context()
    ctx.meta["releaser.json_result"] = (_command_name(ctx), outcome or "ok", data)


def _flush_json(ctx: click.Context) -> None:
    from .output import dumps, envelope

    result = ctx.meta.pop("releaser.json_result", None)
    if result is not None:
        click.echo(dumps(envelope(*result)))


def fail_with(outcome: str, data: Any) -> None:
    """The result a failing command still reports under --json (with its error)."""
    click.get_current_context().meta["releaser.error_data"] = (outcome, data)


def _command_name(ctx: click.Context) -> str:
    path = ctx.meta.get("releaser.command_path") or ctx.command_path
    name = " ".join(path.split()[1:])
    return name or ctx.meta.get("releaser.command") or "releaser"


def _json_mode(ctx: click.Context) -> bool:
    settings = ctx.find_object(Settings)
    return bool(settings and settings.json) or bool(ctx.meta.get("releaser.json"))


def _emit_json_error(ctx: click.Context, exc: click.ClickException) -> None:
    from .output import dumps, envelope

    command = _command_name(ctx)
    outcome, data = ctx.meta.get("releaser.error_data", ("error", None))
    result = ctx.meta.pop("releaser.json_result", None)
    if result is not None and "releaser.error_data" not in ctx.meta:
        command, outcome, data = result
        outcome = "error" if outcome == "ok" else outcome
    click.echo(dumps(envelope(command, outcome, data, error=exc.format_message(),
                              exit_code=exc.exit_code)))


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["releaser.command_path"] = ctx.command_path
    settings = ctx.find_object(Settings)
    if settings is None:
        return value
    settings.json = settings.json or value
    return settings.json


json_option = click.option("--json", "as_json", is_flag=True, callback=_json_flag,
                           help="Print JSON on stdout (errors too).")
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
@click.option("--json", "as_json", is_flag=True,
              help="JSON on stdout for any command (same as the command's --json).")
@click.version_option(__version__, "-V", "--version", prog_name="releaser")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, root: str | None, live: str | None,
        debug: bool, verbose: bool, as_json: bool) -> None:
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
    ctx.obj.json = as_json


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
    from .recover import init as init_store

    result = init_store(_settings().config, actor=actor())
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
@click.argument("db", type=click.Path(path_type=Path, readable=False))
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
    from .progress import reporting
    from .views import validate as validate_file

    with reporting(sys.stderr):
        report = validate_file(_settings().config, db)
    ok = report.passed(strict)
    doc = {"ok": ok, "path": str(db), "checks": report.as_dict()["checks"],
           "warnings": [r.reason() for r in report.warnings()]}
    if as_json and ok:
        emit_json(doc, "ok")
    elif not as_json:
        _print_report(report)
    if not ok:
        first = report.blocking(strict)[0]
        fail_with("rejected", doc)
        raise _click_error(f"{db}: does not pass: {first.reason()}", 1)
    if not as_json:
        click.echo(f"{db}: passes all gates")


# -- publish ---------------------------------------------------------------


@cli.command()
@click.argument("db", type=click.Path(path_type=Path, readable=False))
@click.option("--note", help="A note stored with the release (shown in history).")
@click.option("--dry-run", is_flag=True,
              help="Stage and run the gates, print the diff against live, then discard.")
@click.option("--strict", is_flag=True, help="Treat warnings as failures.")
@click.option("--allow-contract", is_flag=True,
              help="Let schema contract changes (a removed column, table or probe index...) "
                   "through; see [schema] in the config.")
@click.option("--no-wait", is_flag=True,
              help="Accept after the first good [verify] round instead of waiting out "
                   "window_s.")
@wait_option
@json_option
def publish(db: Path, note: str | None, dry_run: bool, strict: bool, allow_contract: bool,
            no_wait: bool, wait_s: float, as_json: bool) -> None:
    """Validate DB, stage it into the idle slot and make it live.

    The gates run on the staged copy, never the source. After the swap the
    release is checked again through the live path; if that fails the
    previous release is put back and the exit code is 1. Then the after_swap
    hooks run and the app is verified ([verify]) for window_s: a failure in
    the window swaps back too (exit 1).

    \b
    Examples:
      releaser publish output/tags.db
      releaser publish output/tags.db --note "weekly rebuild" --wait 60
      releaser publish output/tags.db --dry-run --json
      releaser publish output/tags.db --no-wait
      releaser publish output/tags.db --allow-contract --note "drop legacy column"
    """
    from .progress import reporting
    from .publish import publish as publish_build
    from .results import PublishResult

    config = _settings().config
    # the phase in progress on stderr when it is a TTY; `-v` logs each phase's duration
    with reporting(sys.stderr), interrupt_on_signals():
        try:
            result = publish_build(config, db, actor=actor(), note=note, dry_run=dry_run,
                                   strict=strict, wait_s=wait_s,
                                   wait_window=not no_wait, allow_contract=allow_contract)
        except ReleaserError as exc:
            if isinstance(exc.report, PublishResult):
                if as_json:
                    fail_with(exc.report.outcome, exc.report.as_dict())
                else:
                    _print_diff(exc.report.diff)
                    if exc.report.report is not None:
                        _print_report(exc.report.report)
            raise
    if as_json:
        emit_json(result.as_dict())
        return
    _print_diff(result.diff)
    if result.report is not None:
        _print_report(result.report)
    if result.outcome == "validated":
        click.echo(f"dry run: {db} passes all gates; nothing was published")
        return
    if result.outcome == "unchanged":
        click.echo(f"unchanged: {db} is already live as release {result.release_id} "
                   f"(sha256 {(result.sha256 or '?')[:12]}…); nothing to publish")
        return
    prev = result.rollback_target
    click.echo(
        f"published release {result.release_id} to slot {result.slot} "
        f"(sha256 {result.sha256[:12] if result.sha256 else '?'}…) in "
        f"{sum(result.timings_ms.values()) / 1000:.2f} s")
    if prev is not None:
        click.echo(f"previous release {prev} stays ready: `releaser rollback` puts it back")


def _print_diff(doc: dict[str, Any] | None) -> None:
    """publish --dry-run: the candidate against the live release, before the gate report."""
    if doc is None:
        return
    if "error" in doc:
        click.echo(f"diff: {doc['error']}")
    else:
        from .diff import render as render_diff

        for line in render_diff(doc):
            click.echo(line)
    click.echo("")


def _print_report(report: GateReport) -> None:
    """The gate table: a header, aligned columns, units; details of what did not pass."""
    from .output import ms, table

    def observed(r: Any) -> str:
        if r.observed is None:
            return "-"
        if r.kind == "probe" and isinstance(r.observed, int | float):
            return f"{ms(r.observed)} p95"
        return f"{r.observed:.6g}" if isinstance(r.observed, float) else str(r.observed)

    rows = [(r.outcome, r.kind, r.name, observed(r), r.threshold or "-", ms(r.duration_ms))
            for r in report.results]
    for line in table(("result", "kind", "name", "observed", "limit", "time"), rows,
                      right=(3, 5)):
        click.echo(f"  {line}")
    for r in report.results:
        if r.outcome != "pass" and r.detail:
            click.echo(one_line(f"  {r.outcome}: {r.kind} {r.name}: {r.detail}"))


# -- rollback --------------------------------------------------------------


@cli.command()
@click.option("--to", "to", metavar="RELEASE_ID",
              help="Go back to this release (`releaser releases` lists the ones accepted).")
@click.option("--expect-live", "expect_live", metavar="RELEASE_ID",
              help="Roll back only if this release is live (else exit 3, nothing changes). "
                   "With --wait it defaults to the release live when the command starts.")
@click.option("--reason", help="Why (recorded in history).")
@wait_option
@json_option
def rollback(to: str | None, expect_live: str | None, reason: str | None, wait_s: float,
             as_json: bool) -> None:
    """Put the previous good release back, in constant time.

    Without --to, goes one step further back in the live history each time
    (5 -> 4 -> 3), skipping bad releases and releases already rolled back
    from. When nothing older is good it exits 4, listing the releases `rollback
    --to` accepts and the command to run. The target gets a
    structural check first (header, schema, probes) whose cost does not
    depend on the database size.

    \b
    Examples:
      releaser rollback --reason "categories look wrong"
      releaser rollback --to 12
      releaser rollback --expect-live 14 --wait 30
    """
    from .errors import NothingToRollback
    from .rollback import rollback as roll_back
    from .session import parse_release_id

    target = parse_release_id(to) if to is not None else None
    expected = parse_release_id(expect_live) if expect_live is not None else None
    try:
        with interrupt_on_signals():
            result = roll_back(_settings().config, actor=actor(), to=target, reason=reason,
                               wait_s=wait_s, expect_live=expected)
    except NothingToRollback as exc:
        if exc.accepted:
            exc.message += (f"; to go back to release {exc.accepted[0]}, run "
                            f"`{command_prefix()} rollback --to {exc.accepted[0]}`")
        raise
    if as_json:
        emit_json(result.as_dict(), "ok")
        return
    for line in result.skipped:
        click.echo(line)
    click.echo(f"rolled back to release {result.release_id} (slot {result.slot}, sha256 "
               f"{result.sha256[:12]}…) from release {result.from_release_id} in "
               f"{result.duration_ms:.1f} ms")


def command_prefix() -> str:
    """`releaser` with the global options this invocation was given, for a printed command."""
    s = _settings()
    parts = ["releaser"]
    for flag, value in (("--config", s.config_path), ("--root", s.root), ("--live", s.live)):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


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
    from .views import status as store_status

    doc = store_status(_settings().config)
    if as_json:
        emit_json(doc)
        return
    live, idle = doc["live"], doc["idle"]
    click.echo(f"live path: {doc['live_path']}")
    if live["release_id"] is None:
        click.echo("live:      none")
    else:
        health = live.get("health") or {}
        if health.get("reasons"):
            click.echo(f"live:      release {live['release_id']} in {live['slot']} UNHEALTHY: "
                       + "; ".join(health["reasons"]))
            click.echo(f"           ({live['status']}), sha256 {live['sha256']}, published "
                       f"{live['published_at']}")
        else:
            word = {True: "healthy", None: "not checked yet"}.get(health.get("ok"), "?")
            click.echo(f"live:      release {live['release_id']} in {live['slot']} "
                       f"({live['status']}, {word}), sha256 {live['sha256']}, published "
                       f"{live['published_at']}")
    if idle["release_id"] is None:
        click.echo(f"idle:      {idle['slot']} (empty)")
    else:
        click.echo(f"idle:      release {idle['release_id']} in {idle['slot']} "
                   f"({idle['status']}), sha256 {idle['sha256']}")
    target = doc["rollback_target"]
    if target:
        click.echo(f"rollback:  to release {target} (`{command_prefix()} rollback`)")
    elif doc.get("rollback_to"):
        to = doc["rollback_to"][0]
        click.echo(f"rollback:  nothing older; `{command_prefix()} rollback --to {to}` puts "
                   f"release {to} back (`releaser releases` lists all it accepts)")
    else:
        click.echo("rollback:  nothing to roll back to")
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
    if doc.get("stale_readers_unknown"):
        click.echo("stale readers: unknown: could not look at other users' processes (the "
                   "app's) without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE; run as root, or see "
                   'README "Users and permissions"')
    for r in doc.get("stale_readers", []):
        click.echo(f"stale reader: pid {r['pid']} ({r['command'][:80]}) still has release "
                   f"{r['release_id']} open{' (deleted)' if r['deleted'] else ''}; it has "
                   "not reopened live_path")


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
    from .views import history as store_history

    events = store_history(_settings().config, limit)
    if as_json:
        emit_json(events)
        return
    if not events:
        click.echo("no events yet")
        return
    from .output import cut, table

    rows = [(e["at"], e["action"], e["outcome"],
             e["release_id"] if e["release_id"] is not None else "-",
             e["from_release_id"] if e["from_release_id"] is not None else "-",
             e["actor"], cut(e["reason"] or "", 100)) for e in events]
    for line in table(("at", "action", "outcome", "release", "from", "actor", "reason"),
                      rows, right=(3, 4)):
        click.echo(line)


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
    from .views import check as check_live

    report = check_live(_settings().config, actor=actor(), full_hash=full_hash,
                           integrity=not no_integrity)
    if as_json and report.ok:
        emit_json(report.as_dict(), "ok")
    elif not as_json:
        for reason in report.reasons:
            click.echo(f"  {reason}")
    if not report.ok:
        if not report.recorded:
            click.echo(f"(not recorded: user {getpass.getuser()} cannot write state.db)",
                       err=True)
        fail_with("unhealthy", report.as_dict())
        raise _click_error(
            f"{_settings().config.live_path}: unhealthy: {report.reasons[0]}", 1)
    if not as_json:
        click.echo(f"healthy: release {report.release_id} ({report.duration_ms:.1f} ms)")
    if not report.recorded:
        click.echo(f"(not recorded: user {getpass.getuser()} cannot write state.db)", err=True)


@cli.command()
@json_option
def analyze(as_json: bool) -> None:
    """Ask Prometheus every [[analysis.prometheus]] query once, for the live release.

    Shows each query's value against its fail bounds: what publish's verify window
    and the monitor's watch would see now. Exit 1 when one fails, 2 when one is a
    config error (Prometheus rejects it, or several series and no reduce rule);
    inconclusive (no data, Prometheus down) is reported and exits 0.

    \b
    Examples:
      releaser analyze
      releaser --config /etc/releaser/releaser.toml analyze --json
    """
    from .views import analyze as analyze_live

    config = _settings().config
    if not config.analysis.prometheus:
        raise _click_error(f"{config.source or 'config'}: no [[analysis.prometheus]] "
                           "entries to evaluate", 2)
    doc = analyze_live(config)
    if as_json:
        emit_json(doc)
    else:
        for m in doc["measurements"]:
            value = "-" if m["value"] is None else f"{m['value']:g}" if isinstance(
                m["value"], float) else str(m["value"])
            click.echo(f"{m['name']:<20} {m['outcome']:<13} {value:>12}  healthy "
                       f"{m['threshold']}  {m['detail']}")
    outcomes = {m["outcome"] for m in doc["measurements"]}
    for code, outcome in ((2, "error"), (1, "fail")):
        if outcome in outcomes:
            first = next(m for m in doc["measurements"] if m["outcome"] == outcome)
            raise _click_error(f"analysis {first['name']}: {outcome}: {first['detail']}; "
                               f"query: {first['query']}", code)


# -- diff, releases ----------------------------------------------------------


@cli.command()
@click.argument("first", required=False, metavar="[OLD]")
@click.argument("second", required=False, metavar="[NEW]")
@json_option
def diff(first: str | None, second: str | None, as_json: bool) -> None:
    """Show what changes from OLD to NEW: schema, rows, checks, categories, probes.

    OLD and NEW are database files or release ids (`3`, `r3`; see `releaser
    releases`), read old then new like git diff and sqldiff: each change is
    NEW minus OLD, so `+` means NEW has more. With one argument it is NEW
    and OLD is the live release (a candidate against live); with none, OLD
    is live and NEW the idle release (what a rollback would put back).
    Schema changes are classified expand, contract or warn, like the publish
    gate. Rows by category follow [diff] group_by; probe p95 uses [gates]
    probe_runs runs on each side.

    \b
    Examples:
      releaser diff output/tags.db          # live -> a candidate
      releaser diff                          # live -> the idle release
      releaser diff r3 r5 --json             # release 3 -> release 5
      releaser diff old.db new-build.db
    """
    from .views import diff as diff_sides

    old, new = (None, first) if second is None else (first, second)
    doc = diff_sides(_settings().config, old, new)
    if as_json:
        emit_json(doc, "ok")
        return
    from .diff import render as render_diff

    for line in render_diff(doc):
        click.echo(line)


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many releases, newest first.")
@click.option("--all", "show_all", is_flag=True, help="Every recorded release (no limit).")
@json_option
def releases(limit: int, show_all: bool, as_json: bool) -> None:
    """List the recorded releases: id, published time, sha256, status, note.

    Status is live or idle for the two slots, otherwise good, bad, rejected
    or aborted. `rollback --to ID` accepts any good release still on disk
    (marked "yes" in the rollback column).

    \b
    Examples:
      releaser releases
      releaser releases --all --json | jq '.[] | select(.rollback_ok) | .release_id'
    """
    from .views import releases as list_releases

    rows = list_releases(_settings().config, None if show_all else limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no releases yet")
        return
    from .output import cut, table

    shown = []
    for r in rows:
        status_word = r["status"]
        if status_word in ("live", "idle") and r["recorded_status"] != "good":
            status_word += f" ({r['recorded_status']})"
        note = r["note"] or ""
        if r["status"] in ("rejected", "bad", "aborted") and r["reason"]:
            note = (note + " " if note else "") + f"[{r['reason']}]"
        shown.append((r["release_id"], status_word, r["published_at"] or "-",
                      (r["sha256"] or "-")[:12], "yes" if r["rollback_ok"] else "-",
                      cut(note, 60)))
    for line in table(("id", "status", "published", "sha256", "rollback", "note"), shown,
                      right=(0,)):
        click.echo(line)


# -- watch -------------------------------------------------------------------


@cli.command()
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Folder to watch (overrides [watch] inbox).")
@click.option("--polling/--inotify", default=None,
              help="Poll the folder instead of inotify (network filesystems). "
                   "Default: [watch] polling.")
@json_option
def watch(inbox: Path | None, polling: bool | None, as_json: bool) -> None:
    """Publish every database dropped into the inbox folder.

    A file counts once its size and mtime have been stable for [watch]
    settle_s (dot-files and -journal/-wal/-shm files are ignored; files
    already there at start are processed too). Each is published like
    `releaser publish`, then moved to INBOX/done/ or INBOX/rejected/ with
    NAME.reason.json beside it. A busy store lock means a retry later, not
    a rejection. One line per file on stdout (--json: one JSON envelope per
    line). Runs until SIGTERM or Ctrl-C, finishing the current publish.

    \b
    Examples:
      releaser watch
      releaser watch --inbox /srv/builds/inbox --polling
      releaser -v watch --json
    """
    from .output import envelope
    from .watch import Watcher  # watchdog is only needed here

    config = _settings().config
    folder = inbox.absolute() if inbox else config.watch.inbox
    if folder is None:
        raise _click_error(
            f"{config.source or 'config'}: [watch] inbox is not set; add it or pass "
            "--inbox DIR", 2)

    def report(doc: dict[str, Any]) -> None:
        if as_json:  # one envelope per line (JSON lines), outcome as in reason.json
            click.echo(json.dumps(envelope("watch", doc["outcome"], doc), default=str))
        elif doc["outcome"] == "published":
            click.echo(f"{doc['file']}: published as release {doc['release_id']}")
        else:
            reason = doc["reasons"][0] if doc.get("reasons") else "no reason recorded"
            click.echo(f"{doc['file']}: {doc['outcome']}: {reason}")

    use_polling = config.watch.polling if polling is None else polling
    Watcher(config, folder, polling=use_polling, actor=os.environ.get("RELEASER_ACTOR", "watch"),
            on_result=report).run()


# -- monitor -----------------------------------------------------------------


@cli.command()
@click.option("--interval", "interval_s", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Seconds between checks (overrides [monitor] interval_s).")
@click.option("--listen", metavar="HOST:PORT",
              help="Metrics address (overrides [monitor] metrics_listen; port 0 picks one).")
def monitor(interval_s: float | None, listen: str | None) -> None:
    """Check the live release on a schedule; auto-revert it when it goes bad.

    Runs until SIGTERM. Each check confirms the live file is the recorded
    release and runs the probes; the full sha256 and quick_check run every
    hash_every / integrity_every checks. After failures_before_revert failed
    checks in a row the release is marked bad and the previous good release
    is put back (once per bad release). Serves /metrics (Prometheus),
    /healthz and /status on [monitor] metrics_listen. Under systemd it is a
    Type=notify service with a watchdog.

    \b
    Examples:
      releaser -v monitor
      releaser monitor --interval 60 --listen 127.0.0.1:9464
      curl -s 127.0.0.1:9464/metrics | grep releaser_health
    """
    import dataclasses

    from .config_services import Monitor as MonitorConfig
    from .monitor import run_monitor

    config = _settings().config
    if interval_s is not None or listen is not None:
        try:
            mcfg = dataclasses.replace(
                config.monitor, interval_s=interval_s or config.monitor.interval_s,
                metrics_listen=listen or config.monitor.metrics_listen)
        except ValueError as exc:
            raise _click_error(f"--listen/--interval: {exc}", 2) from None
        assert isinstance(mcfg, MonitorConfig)
        config = dataclasses.replace(config, monitor=mcfg)
    sys.exit(run_monitor(config, announce=click.echo))


@cli.command()
@click.option("--repair", is_flag=True,
              help="Rebuild a missing, empty or damaged state.db from the journal and the "
                   "manifests, import journalled events, rewrite manifests, reconcile.")
@wait_option
@json_option
def fsck(repair: bool, wait_s: float, as_json: bool) -> None:
    """Check that state.db, the journal, the manifests, the files and live agree.

    Read-only: prints each disagreement; exit 0 when clean, 1 when something
    is wrong. With --repair (under the store lock): a missing, empty or
    damaged state.db is kept aside as state.db.corrupt-TIME and rebuilt from
    the journal and the manifests (history whole up to the last journalled
    event); events journalled while state.db was unusable are imported;
    manifests are rewritten; what an interrupted operation left is put right.
    Repair never changes which release is live.

    \b
    Examples:
      releaser fsck
      releaser fsck --repair
      releaser fsck --json | jq .problems
    """
    from .fsck import fsck as run_fsck

    report = run_fsck(_settings().config, repair=repair, actor=actor(), wait_s=wait_s)
    if as_json:
        emit_json(report.as_dict())
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for line in report.problems:
            click.echo(f"problem:  {line}")
        if report.clean:
            click.echo("clean: state.db, journal, manifests, files and live agree")
    if not report.clean:
        raise _click_error(f"{len(report.problems)} problem(s) found"
                           + ("" if repair else "; `releaser fsck --repair` fixes what it can"),
                           1)


@cli.command("help")
@click.argument("command", required=False)
def help_command(command: str | None) -> None:
    """Print the reference of every command (or of one), made from their --help.

    The output is Markdown. Shell completion comes from click: add
    `eval "$(_RELEASER_COMPLETE=bash_source releaser)"` to ~/.bashrc (zsh:
    zsh_source in ~/.zshrc; fish: fish_source into
    ~/.config/fish/completions/releaser.fish).

    \b
    Examples:
      releaser help > releaser-reference.md
      releaser help rollback
    """
    from .reference import reference

    root = click.get_current_context().find_root()
    for line in reference(root, command):
        click.echo(line)


# the fleet commands (releaser/fleet/cli.py); boto3 loads only when one runs
from .fleet.cli import agent as _agent_command  # noqa: E402
from .fleet.cli import fleet as _fleet_group  # noqa: E402

cli.add_command(_fleet_group)
cli.add_command(_agent_command)


def main() -> None:
    from .output import pipe_safe_stdout

    pipe_safe_stdout()  # `releaser history | head -1`: quiet, and the command's own exit code
    cli(prog_name="releaser")


if __name__ == "__main__":  # pragma: no cover
    main()
