"""The layout: light commands import only what they use; imports flow one way."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import Env

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "releaser"

# What `--help`, `status` and `rollback` never need: webhooks (and with them
# http.client, ssl, email), the diff engine, and the long-running services' libraries.
NOT_FOR_LIGHT_COMMANDS = (
    "releaser.notify", "releaser.httpclient", "http.client", "ssl", "email",
    "releaser.diff", "releaser.monitor", "releaser.watch", "releaser.metrics",
    "prometheus_client", "watchdog", "apscheduler",
    "boto3", "botocore", "zstandard", "cryptography", "ctypes", "socket",
)

# The gates (and their check engine): only commands that run a gate load them, not
# the read-only views (status, history, fsck) that run on every page of a dashboard.
GATES = ("releaser.gates", "releaser.checks", "releaser.indexcheck")

# Runs one CLI command in a fresh interpreter, then writes what it imported.
PROBE = """
import json, os, sys
from releaser.cli import cli
code = 0
try:
    cli.main(args=sys.argv[1:], prog_name="releaser")
except SystemExit as exc:
    code = exc.code or 0
with open(os.environ["PROBE_OUT"], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""


def imported_by(tmp: Path, *args: str) -> set[str]:
    out = tmp / "probe.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PROBE_OUT": str(out)})
    doc = json.loads(out.read_text())
    assert doc["code"] == 0, proc.stderr
    return set(doc["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == x or m.startswith(x + ".") for x in NOT_FOR_LIGHT_COMMANDS))


def test_help_status_and_rollback_import_only_what_they_use(published: Env) -> None:
    cfg = ("--config", str(published.config))
    assert heavy(imported_by(published.tmp, "--help")) == []
    status = imported_by(published.tmp, *cfg, "status")
    assert heavy(status) == []
    assert status.isdisjoint(GATES)
    assert imported_by(published.tmp, *cfg, "history").isdisjoint(GATES)
    assert GATES[0] in imported_by(published.tmp, *cfg, "check")  # the probe sees it load
    assert heavy(imported_by(published.tmp, *cfg, "rollback", "--reason", "layout")) == []
    assert published.status()["live"]["release_id"] == 1  # the rollback really ran
    # the probe sees imports: `diff` does load the diff engine
    assert "releaser.diff" in imported_by(published.tmp, *cfg, "diff", "1", "2")


def test_a_configured_webhook_is_still_sent_from_rollback(published: Env) -> None:
    """The other side of the lazy import: with a webhook, rollback loads notify."""
    published.write_config('[[notify.webhook]]\nurl = "http://127.0.0.1:9/hook"\n'
                           'retries = 0\ntimeout_s = 0.5\n')
    mods = imported_by(published.tmp, "--config", str(published.config), "rollback")
    assert "releaser.notify" in mods


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _relative_imports(path: Path) -> set[str]:
    """The package's modules `path` imports at run time, as dotted names (fleet.agent)."""
    package = path.relative_to(PACKAGE).parent.parts
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for sub in node.body for n in ast.walk(sub)}
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0 or id(node) in type_only:
            continue
        base = package[:len(package) - (node.level - 1)]
        names = [node.module] if node.module else [a.name for a in node.names]
        out.update(".".join((*base, name.split(".")[0])) for name in names)
    return out - {"__version__"}


def test_module_imports_have_no_cycles() -> None:
    """cli -> verbs -> store/gates/state: one way, across releaser/ and releaser/fleet/.

    In-function imports count too; imports under `if TYPE_CHECKING:` do not (they
    never run: fleet.rollout names the Agent type it is handed, agent imports rollout).
    """
    graph = {_module_name(p): _relative_imports(p) for p in PACKAGE.rglob("*.py")}
    assert "fleet.agent" in graph and "fleet.rollout" in graph["fleet.agent"]
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        if mod in path:
            pytest.fail("import cycle: " + " -> ".join((*path[path.index(mod):], mod)))
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, (*path, mod))
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, ())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_imported_by_the_package() -> None:
    """A runtime dependency must do real work: some module of releaser imports it."""
    declared = {_canonical(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in
                tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    dists = importlib.metadata.packages_distributions()
    used = {_canonical(d) for mod in imported for d in dists.get(mod, ())}
    assert declared - used == set(), "declared but never imported by releaser"


def test_every_module_opens_with_a_docstring() -> None:
    """Each module states its job and the rules it keeps before any code."""
    bare = [str(p.relative_to(REPO)) for p in sorted(PACKAGE.rglob("*.py"))
            if not ast.get_docstring(ast.parse(p.read_text()))]
    assert bare == []


MAX_MODULE_LINES = 400  # the brief's "under ~400 lines": one job per module


def test_every_module_is_at_most_400_lines() -> None:
    """Lines counted as `wc -l` counts them (newlines); split a module that grows past it."""
    long = {str(p.relative_to(REPO)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := p.read_bytes().count(b"\n")) > MAX_MODULE_LINES}
    assert long == {}, "over 400 lines: split by job (README 'How it works: the modules')"


def test_the_readme_names_every_module() -> None:
    """A newcomer finds each module in the README: releaser/*.py in the module table of
    'How it works: the modules', releaser/fleet/*.py in the Fleet sections' module lists."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("\n## How it works: the modules\n")[1].split("\n## ")[0]
    fleet = readme.split("\n## Fleet")[1].split("\n## Logs")[0]
    named_top = set(re.findall(r"`([a-z_]+\.py)`", table))
    named_fleet = set(re.findall(r"`([a-z_]+\.py)`", fleet))
    missing = [f"releaser/{p.name}" for p in sorted(PACKAGE.glob("*.py"))
               if p.name != "__init__.py" and p.name not in named_top]
    missing += [f"releaser/fleet/{p.name}" for p in sorted((PACKAGE / "fleet").glob("*.py"))
                if p.name != "__init__.py" and p.name not in named_fleet]
    assert missing == [], "not named in README.md's module lists"
