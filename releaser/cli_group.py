"""The `releaser` click group: global options, and library errors turned into exit codes.

Global options (--config, --root, --live, --debug, -v, --json) are taken
before or after the subcommand. ReleaserError becomes one line on stderr and
its documented exit code; Ctrl-C, SIGTERM and SIGHUP exit 130 saying what is
live; anything unexpected is exit 5 with a hint to rerun with --debug for the
traceback. Under --json the command's result, or the error, is printed as
one envelope. Knows no command: cli.py registers them.
"""

from __future__ import annotations

import getpass
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from . import __version__
from .cli_common import Settings, _click_error, _emit_json_error, _flush_json, _json_mode
from .errors import EXIT_IO, EXIT_USAGE, ReleaserError
from .signals import interrupt_on_signals

EXIT_CODES_HELP = """\b
Exit codes:
    0  ok
    1  a gate or health check failed (nothing changed)
    2  usage or config error
    3  another operation holds the lock (after --wait)
    4  nothing to roll back to
    5  I/O or internal error, live untouched
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP); an unverified swap was undone
"""


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
        except _sqlite_errors() as exc:
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


def _sqlite_errors() -> type[Exception] | tuple[()]:
    """sqlite3.Error once sqlite3 is loaded (every store command loads it); before that
    no SQLite error can happen, and --help and --version never load it."""
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3.Error if sqlite3 is not None else ()


def _debug(ctx: click.Context) -> bool:
    settings = ctx.obj
    return bool(getattr(settings, "debug", False)) or "--debug" in sys.argv


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
    from .log import setup_logging  # here: --help and --version never load logging

    setup_logging(debug=debug, verbose=verbose)
    ctx.obj = Settings(config_path, root, live, debug)
    ctx.obj.json = as_json
