"""The data engineer's commands: `init`, `validate`, `publish`, and the gate table they print.

Thin: each parses its options, calls its verb (imported when it runs, so
`--help` loads none), and prints the result or hands it to --json. Nothing
here decides whether a build passes; the verbs and gates do.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_common import (
    _click_error,
    _settings,
    actor,
    emit_json,
    fail_with,
    json_option,
    one_line,
    wait_option,
)
from .errors import ReleaserError
from .signals import interrupt_on_signals

if TYPE_CHECKING:
    from .gates import GateReport


@click.command()
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


@click.command()
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


@click.command()
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
    from .output import ms, table, terminal_width

    def observed(r: Any) -> str:
        if r.observed is None:
            return "-"
        if r.kind == "probe" and isinstance(r.observed, int | float):
            return f"{ms(r.observed)} p95"
        return f"{r.observed:.6g}" if isinstance(r.observed, float) else str(r.observed)

    rows = [(r.outcome, r.kind, r.name, observed(r), r.threshold or "-", ms(r.duration_ms))
            for r in report.results]
    for line in table(("result", "kind", "name", "observed", "limit", "time"), rows,
                      right=(3, 5), wrap=4, width=terminal_width(indent=2)):
        click.echo(f"  {line}")
    for r in report.results:
        if r.outcome != "pass" and r.detail:
            click.echo(one_line(f"  {r.outcome}: {r.kind} {r.name}: {r.detail}"))
