"""The read-only commands: `status`, `history`, `diff`, `releases`, `help`.

They change nothing in the store (no lock taken) and import their view when
they run; `status` loads no HTTP, diff or service library. Tables are aligned
by releaser.output; --json prints the view's data as is.
"""

from __future__ import annotations

from typing import Any

import click

from .cli_common import _settings, command_prefix, emit_json, json_option


def _echo_analysis(records: list[dict[str, Any]]) -> None:
    """status: one line per analysis record (analysis_record.describe)."""
    from .analysis_record import describe

    what = {"publish": "verify window", "monitor": "monitor watch", "agent": "fleet bake"}
    for r in records:
        note = "" if r.get("live") else " (not live)"
        click.echo(f"analysis:  {what.get(r.get('who'), r.get('who'))} of release "
                   f"{r.get('release_id')}{note}: {describe(r)}")


@click.command()
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
    _echo_analysis(doc.get("analysis") or [])
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command("help")
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
