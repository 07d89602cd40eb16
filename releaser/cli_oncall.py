"""On-call's commands: `rollback`, `check`, `analyze`, `fsck`.

Thin: each parses its options, calls its verb (imported when it runs:
`rollback` loads no HTTP, diff or service library unless a webhook is
configured), and prints the result or hands it to --json. An unhealthy or
inconsistent answer is exit 1, with the data still reported under --json.
"""

from __future__ import annotations

import getpass

import click

from .cli_common import (
    _click_error,
    _settings,
    actor,
    command_prefix,
    emit_json,
    fail_with,
    json_option,
    wait_option,
)
from .signals import interrupt_on_signals


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
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
