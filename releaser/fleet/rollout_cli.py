"""Click commands of the rollout work (issue 15), added to the `releaser fleet` group
by register(): `fleet doctor` (and the wave controls)."""

from __future__ import annotations

import sys

import click

from ..cli_common import _settings, emit_json, json_option


@click.command()
@click.option("--writers", type=click.IntRange(2, 64), default=8, show_default=True,
              help="Concurrent writers in the race checks.")
@click.option("--trials", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Races per race check.")
@json_option
def doctor(writers: int, trials: int, as_json: bool) -> None:
    """Check the configured S3 endpoint before trusting it with a fleet.

    Checks read-after-write, a create-only race (concurrent If-None-Match
    writers: exactly one wins), a stale If-Match refused, concurrent
    compare-and-swap (exactly one winner) and conditional GET 304, under
    PREFIX/doctor/ (removed afterwards). Exit 1 names the failing property;
    exit 5 when the endpoint cannot be reached.

    \b
    Examples:
      releaser fleet doctor
      releaser fleet doctor --writers 16 --trials 10 --json
    """
    from .doctor import doctor as doctor_verb

    result = doctor_verb(_settings().config, writers=writers, trials=trials)
    if as_json:
        emit_json(result)
    else:
        for check in result["checks"]:
            click.echo(f"{'ok  ' if check['ok'] else 'FAIL'}  {check['name']:<24} "
                       f"{check['detail']}")
    if result["failed"]:
        click.echo(f"error: {result['endpoint']} fails: {', '.join(result['failed'])}; "
                   "do not use it for a fleet (its conditional writes cannot be trusted)",
                   err=True)
        sys.exit(1)


def _control(action: str, channel: str | None, note: str | None, as_json: bool) -> None:
    from ..cli_common import actor
    from .control import control

    result = control(_settings().config, channel=channel, action=action, actor=actor(),
                     note=note)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['channel']}: {action} written as seq {result['seq']} "
               f"({result['open_waves']} of {len(result['plan']['waves'])} waves open)")


channel_option = click.option("--channel", metavar="NAME",
                              help="Channel (default: [fleet] channel).")
note_option = click.option("--note", help="Why (shown in status and history).")


@click.command()
@channel_option
@note_option
@json_option
def pause(channel: str | None, note: str | None, as_json: bool) -> None:
    """Hold a wave rollout: no host takes the release until `fleet resume`.

    Hosts that already applied it keep it. Written as a new signed pointer.

    \b
    Examples:
      releaser fleet pause --channel production --note "watching error rates"
    """
    _control("pause", channel, note, as_json)


@click.command()
@channel_option
@note_option
@json_option
def resume(channel: str | None, note: str | None, as_json: bool) -> None:
    """Continue a paused wave rollout.

    \b
    Examples:
      releaser fleet resume --channel production
    """
    _control("resume", channel, note, as_json)


@click.command(name="promote-wave")
@channel_option
@note_option
@json_option
def promote_wave(channel: str | None, note: str | None, as_json: bool) -> None:
    """Open the next wave now (the manual gate; skips its wait and bake).

    An aborted rollout stays aborted. Push with --manual to make every wave
    wait for this command.

    \b
    Examples:
      releaser fleet push output/tags.db --waves 1,100% --manual
      releaser fleet promote-wave --channel production
    """
    _control("promote-wave", channel, note, as_json)


def register(group: click.Group) -> None:
    for command in (doctor, pause, resume, promote_wave):
        group.add_command(command)
