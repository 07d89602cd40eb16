"""`releaser fleet ...` and `releaser agent`: thin click commands over the fleet verbs.

Registered into releaser/cli.py; the group (cli_group.py) turns ReleaserError into one
line and the documented exit code: 1 refused (gates, signature, acks below --require-acked),
2 usage/config, 3 the channel pointer was moved by another writer, 4 nothing to roll
back to or promote, 5 bucket unreachable / I/O.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli_common import _settings, actor, emit_json, json_option

channel_option = click.option("--channel", metavar="NAME",
                              help="Channel (default: [fleet] channel).")


@click.group()
def fleet() -> None:
    """Releases for many hosts through S3-compatible object storage.

    A build host pushes a gated release to a channel (staging, production);
    every `releaser agent` on that channel verifies its signature and takes it.
    Needs [fleet] in the config; credentials come from the AWS SDK's standard
    chain (AWS_ACCESS_KEY_ID/..., ~/.aws, instance role), never from the config.

    \b
    Examples:
      releaser fleet keygen --secret /etc/releaser/fleet.key --public fleet.pub
      releaser fleet push output/tags.db --channel staging --note "nightly"
      releaser fleet status --channel staging
      releaser fleet promote --from staging --to production --require-acked 100
      releaser fleet rollback --channel production
      releaser fleet releases --channel production --json

    \b
    Exit codes:
      0  ok
      1  refused: local gates failed, bad signature, too few hosts acknowledged
      2  usage or config error
      3  another writer moved the channel pointer first (nothing applied)
      4  nothing to roll back to, promote, pause or resume
      5  bucket unreachable or I/O error
    """


@fleet.command()
@click.option("--secret", "secret_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Where to write the secret (signing) key, mode 0600.")
@click.option("--public", "public_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Where to write the public key (for agents' public_keys).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@json_option
def keygen(secret_path: Path, public_path: Path, force: bool, as_json: bool) -> None:
    """Write an Ed25519 key pair in minisign format.

    The secret key stays on build hosts ([fleet] signing_key); agents list the
    public key in [fleet] public_keys. `minisign -V -p KEY.pub` verifies what
    it signs.

    \b
    Examples:
      releaser fleet keygen --secret ~/.releaser/fleet.key --public fleet.pub
    """
    from .sign import keygen as make

    key = make(secret_path, public_path, force=force)
    result = {"key_id": key.public.key_id_hex, "secret": str(secret_path),
              "public": str(public_path)}
    if as_json:
        emit_json(result)
        return
    click.echo(f"key {result['key_id']}: secret {secret_path} (keep it on build hosts), "
               f"public {public_path} (list it in agents' [fleet] public_keys)")


@fleet.command()
@click.argument("db", type=click.Path(path_type=Path))
@channel_option
@click.option("--note", help="Why (shown in status and history).")
@click.option("--waves", metavar="SPEC", help="Roll out in waves, e.g. 1,25%,100% "
              "(default: [fleet] waves; empty = every host at once).")
@click.option("--bake", "bake_s", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Healthy time between waves (default: [fleet] bake_s).")
@click.option("--canary", metavar="HOST,...", help="Hosts of the first wave.")
@click.option("--max-failures", type=click.IntRange(min=1), metavar="N",
              help="Rejections/reverts that abort the rollout (default: [fleet] "
                   "max_failures).")
@click.option("--manual", is_flag=True, help="Each wave after the first waits for "
              "`fleet promote-wave`.")
@json_option
def push(db: Path, channel: str | None, note: str | None, waves: str | None,
         bake_s: float | None, canary: str | None, max_failures: int | None, manual: bool,
         as_json: bool) -> None:
    """Gate DB locally, upload it and point the channel at it.

    Runs the same gates as `releaser validate`; uploads nothing if they fail.
    The file is stored once, compressed and named by its sha256.

    \b
    Examples:
      releaser fleet push output/tags.db --channel staging --note "nightly"
      releaser fleet push output/tags.db --channel production --waves 1,25%,100% --bake 300
    """
    from .push import push as push_verb

    result = push_verb(_settings().config, db, channel=channel, note=note, actor=actor(),
                       waves=waves, bake_s=bake_s, max_failures=max_failures,
                       canary=[c for c in (canary or "").split(",") if c], manual=manual)
    if as_json:
        emit_json(result)
        return
    reused = " (file already in the bucket)" if not result["uploaded_bytes"] else ""
    click.echo(f"pushed {result['sha256'][:12]}… to {result['channel']} as seq "
               f"{result['seq']}: {result['size']} bytes, {result['compressed_size']} "
               f"compressed{reused}")
    from ..output import size

    for d in result["deltas"]:  # what an agent holding that base downloads instead
        click.echo(f"  delta from {d['base_sha256'][:12]}…: {size(d['size'])} "
                   f"({100 * d['size'] / max(result['compressed_size'], 1):.1f} % of the "
                   "compressed file)")
    for note in result["delta_notes"]:
        click.echo(f"  {note}")
    plan = result.get("plan")
    if plan:
        from .waves import EVERYONE

        waves = [", ".join(("every other host" if i else "every host") if h == EVERYONE
                           else h for h in wave) for i, wave in enumerate(plan["waves"])]
        click.echo(f"  waves: {' -> '.join(waves)}; bake {plan['bake_s']:g} s"
                   + (", each wave after the first waits for `fleet promote-wave`"
                      if plan.get("manual") else ""))
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@fleet.command()
@click.option("--from", "source", required=True, metavar="NAME", help="Channel to copy from.")
@click.option("--to", "target", required=True, metavar="NAME", help="Channel to move.")
@click.option("--require-acked", type=click.FloatRange(0, 100), default=0.0,
              show_default=True, metavar="PCT",
              help="Refuse unless this percentage of the source channel's hosts "
                   "acknowledged the release as applied.")
@click.option("--note", help="Why (shown in status and history).")
@json_option
def promote(source: str, target: str, require_acked: float, note: str | None,
            as_json: bool) -> None:
    """Point one channel at the release another channel has.

    \b
    Examples:
      releaser fleet promote --from staging --to production --require-acked 100
    """
    from .promote import promote as promote_verb

    result = promote_verb(_settings().config, source=source, target=target,
                          require_acked=require_acked, actor=actor(), note=note)
    if as_json:
        emit_json(result)
        return
    if result["outcome"] == "unchanged":
        click.echo(f"{target} already has {result['sha256'][:12]}… (seq {result['seq']})")
        return
    click.echo(f"promoted {result['sha256'][:12]}… from {source} (seq {result['from_seq']}, "
               f"{result['acked']}/{result['hosts']} hosts acked) to {target} as seq "
               f"{result['seq']}")


@fleet.command()
@channel_option
@click.option("--to", "to_seq", type=int, metavar="SEQ",
              help="Go back to the release pointer SEQ named (see `fleet releases`).")
@click.option("--note", help="Why (shown in status and history).")
@json_option
def rollback(channel: str | None, to_seq: int | None, note: str | None,
             as_json: bool) -> None:
    """Point the channel back at the previous release (a new, higher seq).

    Agents still holding that release switch to it with no download.

    \b
    Examples:
      releaser fleet rollback --channel production --note "INC-123"
      releaser fleet rollback --channel production --to 41
    """
    from .rollback import rollback as rollback_verb

    result = rollback_verb(_settings().config, channel=channel, to_seq=to_seq,
                           actor=actor(), note=note)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['channel']}: seq {result['seq']} points back at "
               f"{result['sha256'][:12]}… (the release of seq {result['to_seq']})")


@fleet.command()
@channel_option
@json_option
def status(channel: str | None, as_json: bool) -> None:
    """Show the channel pointer and every host's acknowledgement.

    \b
    Examples:
      releaser fleet status --channel production
      releaser fleet status --channel production --json | jq '.summary'
    """
    from .status import status as status_verb

    result = status_verb(_settings().config, channel=channel)
    if as_json:
        emit_json(result)
        return
    p = result["pointer"]
    if p is None:
        click.echo(f"channel {result['channel']}: no pointer yet")
    else:
        expired = "  EXPIRED" if p["expired"] else ""
        click.echo(f"channel {result['channel']}: seq {p['seq']} {p['sha256'][:12]}… "
                   f"({p['action']} by {p['actor']} at {p['created']}, expires "
                   f"{p['expires']}){expired}")
    r = result.get("rollout")
    if r is not None:
        click.echo(f"rollout: {r['state']}, {r['open_waves']} of {len(r['waves'])} waves "
                   f"open, bake {r['bake_s']:g} s, {len(r['failed'])} of max "
                   f"{r['max_failures']} failures"
                   + (f", next wave at {r['bake_until']}" if r.get("bake_until") else "")
                   + (f": {'; '.join(r['reasons'])}" if r["reasons"] else ""))
        if r.get("inconclusive"):
            click.echo(f"  `releaser fleet resume --channel {result['channel']}` accepts the "
                       "inconclusive analysis of " + ", ".join(r["inconclusive"])
                       + " and lets the waves go on")
    from ..output import size, table

    rows = []
    for h in result["hosts"]:
        notes = "; ".join(h.get("reasons") or [])
        if isinstance(h.get("analysis"), dict):  # its bake analysis (fleet/bake.py)
            from ..analysis_record import describe

            notes += f"{'  ' if notes else ''}analysis {describe(h['analysis'])}"
        rows.append((h.get("host_id", "?"), h.get("state", "?"), h.get("applied_seq", "-"),
                     (h.get("applied_sha256") or "-")[:12], size(h.get("bytes_downloaded")),
                     size(h.get("bytes_downloaded_total")), h.get("last_seen"), notes))
    if rows:  # downloaded: the last download's bytes, and all this agent has downloaded
        for line in table(("host", "state", "live seq", "live sha256", "last download",
                           "downloaded total", "last seen", "notes"), rows, right=(2, 4, 5)):
            click.echo(f"  {line}")
    s = result["summary"]
    states = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("hosts",
                                                                    "on_pointer_release"))
    click.echo(f"{s['hosts']} hosts, {s['on_pointer_release']} on the pointer's release"
               + (f" ({states})" if states else ""))


@fleet.command()
@channel_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many pointers, newest first.")
@json_option
def releases(channel: str | None, limit: int, as_json: bool) -> None:
    """List the channel's pointer history, newest first.

    \b
    Examples:
      releaser fleet releases --channel production --limit 10
    """
    from .status import releases as releases_verb

    result = releases_verb(_settings().config, channel=channel, limit=limit)
    if as_json:
        emit_json(result)
        return
    if not result:
        click.echo("no pointer yet on this channel (`releaser fleet push` makes one)")
        return
    from ..output import table

    rows = [(r["seq"], r["sha256"][:12] + "…", r["action"], r["created"], r["actor"],
             r["note"] or "") for r in result]
    for line in table(("seq", "sha256", "action", "created", "actor", "note"), rows,
                      right=(0,)):
        click.echo(line)


@click.command()
@click.option("--once", is_flag=True,
              help="Poll once, apply, report, exit: 0 applied, 1 rejected or reverted, "
                   "5 bucket unreachable or retry needed.")
def agent(once: bool) -> None:
    """Keep this host on its channel's release (long-running).

    Polls channels/CHANNEL.json every [fleet] poll_s (jittered), verifies it
    against [fleet] public_keys, and applies a new release through the same
    pipeline as `releaser publish` (or, if this host still has it, the O(1)
    rollback path). Reports to status/CHANNEL/HOST_ID.json. Keeps serving the
    last good release when the bucket is unreachable or a release is refused.
    Under systemd: Type=notify with a watchdog; metrics on [fleet] metrics_listen.

    \b
    Examples:
      releaser -v agent
      releaser agent --once
    """
    from .agent import run_agent

    sys.exit(run_agent(_settings().config, once=once, announce=click.echo))


# rollout commands (doctor, wave controls): releaser/fleet/rollout_cli.py
from .rollout_cli import register as _register_rollout  # noqa: E402

_register_rollout(fleet)
