"""The command line: the `releaser` group with every command registered, and main().

Thin: the group and its error -> exit code mapping live in cli_group, what
every command shares in cli_common, the commands in cli_publishing (init,
validate, publish), cli_oncall (rollback, check, analyze, fsck), cli_views
(status, history, diff, releases, help) and cli_services (watch, monitor),
the fleet's in fleet/cli.py. Library errors (ReleaserError) become one line
on stderr and their exit code; anything unexpected is exit 5 with a hint to
rerun with --debug for the traceback.
"""

from __future__ import annotations

from .cli_group import cli
from .cli_oncall import analyze, check, fsck, rollback
from .cli_publishing import init, publish, validate
from .cli_services import monitor, watch
from .cli_views import diff, help_command, history, releases, status

# the fleet commands (releaser/fleet/cli.py); boto3 loads only when one runs
from .fleet.cli import agent as _agent_command
from .fleet.cli import fleet as _fleet_group

# Each command imports its verb (and the verb its dependencies) when it runs:
# `--help`, `status` and `rollback` load neither the diff engine, nor HTTP/TLS,
# nor prometheus_client, watchdog or APScheduler; `--help` and `--version` not
# even the config (tests/test_layout.py checks; `make bench` times start-up).
for _command in (init, validate, publish, rollback, status, history, check, analyze, diff,
                 releases, watch, monitor, fsck, help_command, _fleet_group, _agent_command):
    cli.add_command(_command)


def main() -> None:
    from .output import pipe_safe_stdout

    pipe_safe_stdout()  # `releaser history | head -1`: quiet, and the command's own exit code
    cli(prog_name="releaser")


if __name__ == "__main__":  # pragma: no cover
    main()
