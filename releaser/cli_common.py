"""What every command shares: its settings, the actor, one-line errors, --json and --wait.

The config is loaded on first use (Settings.config), so `--help` and
`--version` never read it. Under --json a command hands its result to
emit_json (or fail_with when it fails after all); the group (cli_group)
prints it as the one envelope when the command ends. Error text is always
one line (one_line). Imports nothing of releaser at module level (click
only), so every command module, and fleet/cli.py, import it without a cycle.
"""

from __future__ import annotations

import getpass
import os
import shlex
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .config import Config


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


def _settings() -> Settings:
    return click.get_current_context().find_object(Settings)  # type: ignore[return-value]


def one_line(text: str) -> str:
    """Errors and history stay one line each, whatever SQLite or a file name holds."""
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _click_error(message: str, code: int) -> click.ClickException:
    err = click.ClickException(one_line(message))
    err.exit_code = code
    return err


def actor() -> str:
    return os.environ.get("RELEASER_ACTOR") or os.environ.get("SUDO_USER") or getpass.getuser()


def command_prefix() -> str:
    """`releaser` with the global options this invocation was given, for a printed command."""
    s = _settings()
    parts = ["releaser"]
    for flag, value in (("--config", s.config_path), ("--root", s.root), ("--live", s.live)):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


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
