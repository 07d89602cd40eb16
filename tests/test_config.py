"""Config: lookup order, overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from releaser.cli import cli
from releaser.config import load_config
from releaser.config_gates import Bounds
from releaser.errors import ConfigError

from .conftest import DEFAULT_CONFIG, Env, config_text


def test_default_config_loads_with_documented_shape() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert config.live_path == Path("/var/lib/prompt-scribe/tags.db")
    assert config.root == Path("/var/lib/releaser")
    assert config.keep_releases == 5
    assert config.gates.integrity == "quick"
    assert config.gates.probe_runs == 20
    assert config.gates.query_timeout_ms == 5000
    names = [c.name for c in config.checks]
    assert names[:2] == ["rows", "avg_confidence"]
    assert "category_coverage" in names
    rows = config.checks[0]
    assert rows.fail == Bounds(min=1) and rows.change.max_drop_pct == 5.0
    conf = config.checks[1]
    assert conf.fail == Bounds(0.7, 1.0) and conf.warn == Bounds(min=0.8)
    assert conf.change.max_delta == 0.05
    assert {p.name for p in config.probes} >= {"high_freq", "lookup_by_name"}
    lookup = next(p for p in config.probes if p.name == "lookup_by_name")
    assert "?" in lookup.sql and lookup.params == ("1girl",)
    assert "tags_final" in config.gates.required
    assert config.monitor.interval_s == 300


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "releaser.toml"
    cfg.parent.mkdir()
    cfg.write_text('live_path = "app/tags.db"\nroot = "../store"\n')
    config = load_config(cfg)
    assert config.live_path == tmp_path / "etc" / "app" / "tags.db"
    assert config.root == tmp_path / "etc" / ".." / "store"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (tmp_path / n for n in ("a.toml", "b.toml", "releaser.toml"))
    for path, name in ((a, "A"), (b, "B"), (c, "C")):
        path.write_text(f'live_path = "/x/{name}/tags.db"\nroot = "/x/{name}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELEASER_CONFIG", str(b))
    assert load_config(a).root == Path("/x/A")  # --config wins
    assert load_config(None).root == Path("/x/B")  # then $RELEASER_CONFIG
    monkeypatch.delenv("RELEASER_CONFIG")
    assert load_config(None).root == Path("/x/C")  # then ./releaser.toml


def test_overrides_win_over_file(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text('live_path = "/a/tags.db"\nroot = "/a"\n')
    config = load_config(cfg, root=tmp_path / "s", live=tmp_path / "l.db")
    assert config.root == tmp_path / "s" and config.live_path == tmp_path / "l.db"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('live_path = "/a"\nroot = "/b"\nbogus = 1\n', "bogus: unknown key"),
        ('live_path = "/a"\nroot = "/b"\nkeep_releases = "five"\n',
         "keep_releases: expected an integer"),
        ('live_path = "/a"\nroot = "/b"\nkeep_releases = 1\n', "keep_releases must be >= 2"),
        ('live_path = "/a"\nroot = "/b"\n[gates]\nintegrity = "slow"\n',
         'gates: integrity must be "quick" or "full"'),
        ('live_path = "/a"\nroot = "/b"\n[gates]\nprobe_runs = 0\n', "probe_runs must be >= 1"),
        ('live_path = "/a"\nroot = "/b"\n[gates]\nsqlite_heap_limit_mb = 4\n',
         "gates: sqlite_heap_limit_mb must be >= 16"),
        ('live_path = "/a"\nroot = "/b"\n[[checks]]\nname = "x"\nsql = "SELECT 1"\n'
         'fail = { min = 2, max = 1 }\n', "checks[0].fail: min (2.0) is greater than max"),
        ('live_path = "/a"\nroot = "/b"\n[[checks]]\nname = "x"\n', "checks[0].sql: is required"),
        ('live_path = "/a"\nroot = "/b"\n[[checks]]\nname = "x"\nsql = "SELECT 1"\n'
         'change = { max_drop = 5 }\n', "checks[0].change.max_drop: unknown key"),
        ('live_path = "/a"\nroot = "/b"\n[[probes]]\nname = "p"\nsql = "SELECT 1"\n'
         "budget_ms = -1\n", "budget_ms must be > 0"),
        ('live_path = "/a"\nroot = "/b"\n[monitor]\nmetrics_listen = "nope"\n',
         'metrics_listen must be "HOST:PORT"'),
        ('root = "/b"\n', "live_path: is required"),
        ('live_path = "/a"\nroot = "/b"\n[[checks]]\nname = "x"\nsql = "SELECT 1"\n'
         '[[checks]]\nname = "x"\nsql = "SELECT 2"\n', "duplicate name 'x'"),
        ("live_path = \n", "not valid TOML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, body: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(cfg) in err.value.message
    assert expected in err.value.message


def test_bad_config_through_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('live_path = "/a"\nroot = "/b"\n[gates]\nprobe_runz = 3\n')
    result = CliRunner().invoke(cli, ["--config", str(cfg), "status"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(cfg) in lines[0] and "gates.probe_runz: unknown key" in lines[0]
    assert "Traceback" not in result.output


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.toml"), "status"])
    assert result.exit_code == 2
    assert "nope.toml: config file not found" in result.stderr


def test_no_config_anywhere_asks_for_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELEASER_CONFIG", raising=False)
    if Path("/etc/releaser/releaser.toml").exists():
        pytest.skip("a system config exists on this machine")
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 2
    assert "no config file found" in result.stderr


def test_root_and_live_flags_work_without_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELEASER_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["--root", "st", "--live", "app/tags.db", "init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "st" / "state.db").is_file()
    assert (tmp_path / "st" / "slots" / "blue").is_dir()


def test_config_text_helper_points_into_tmp(env: Env) -> None:
    text = config_text(env.live, env.root)
    assert f'live_path = "{env.live}"' in text and f'root = "{env.root}"' in text


# -- every key the code accepts is documented ------------------------------------------


def _keys(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], bool]]:
    """(dotted path, is a table) of every key Config accepts, from its dataclasses."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "source":
            continue
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        out.append((path + (f.name,),
                    dataclasses.is_dataclass(item) or typing.get_origin(tp) is dict))
        if dataclasses.is_dataclass(item):
            out.extend(_keys(item, path + (f.name,)))  # type: ignore[arg-type]
    return out


def _sections(text: str) -> dict[tuple[str, ...], str]:
    """TOML text (commented or not) by the [section] / [[section]] it is under; the
    comment paragraph just above a header (its prose) counts as that section's."""
    import re

    out: dict[tuple[str, ...], list[str]] = {(): []}
    current: tuple[str, ...] = ()
    for line in text.splitlines():
        m = re.match(r"^#?\s*\[\[?([a-z_.]+)\]\]?\s*(#.*)?$", line)
        if m:
            body = out[current]
            prose = len(body)
            while prose and body[prose - 1].startswith("#"):
                prose -= 1
            current = tuple(m.group(1).split("."))
            out.setdefault(current, []).extend(body[prose:])
        else:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_every_config_key_is_in_the_shipped_config_and_the_readme() -> None:
    import re

    from releaser.config import Config

    keys = _keys(Config)
    assert (("gates", "sqlite_heap_limit_mb"), False) in keys  # the walk sees nested keys
    assert (("analysis", "prometheus", "fail", "max"), False) in keys
    shipped = DEFAULT_CONFIG.read_text()
    sections = _sections(shipped)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    config_part = readme.split("\n## Configuration\n")[1].split("\n## ")[0]
    rows = {}
    for row in config_part.splitlines():
        if row.startswith("| top level |"):
            rows[()] = row
        elif m := re.match(r"^\| `\[\[?([a-z_.]+)\]\]?` \|", row):
            rows[tuple(m.group(1).split("."))] = row
    missing = []
    for path, table in keys:
        *parent_list, key = path
        parent = tuple(parent_list)
        # the shipped config: its [section] header, `key =` in its section, or inside an
        # inline table (`fail = { min = 1 }`, `warn = { min, max }`, `x = [{ argv = .. }]`)
        in_shipped = (
            (table and any(s[:len(path)] == path for s in sections))
            or re.search(rf"\b{key}\s*=", sections.get(parent, ""))
            or (parent and re.search(rf"\b{parent[-1]}`?\s*=\s*\[?\s*{{[^}}\n]*\b{key}\b",
                                     shipped)))
        # the README's table of keys: in the row of its section (or nearest enclosing one)
        row = next((rows[parent[:n]] for n in range(len(parent), -1, -1)
                    if parent[:n] in rows), "")
        in_readme = (f"`{key}`" in row
                     or (table and any(r[:len(path)] == path for r in rows)))
        if not in_shipped:
            missing.append(f"config/releaser.toml: {'.'.join(path)}")
        if not in_readme:
            missing.append(f"README.md (Configuration, table of keys): {'.'.join(path)}")
    assert not missing, "\n".join(missing)
