"""Real users and groups for the permission tests (tests/test_users.py).

As root, the session creates a group of publishers and five real users, removed at
its end (no test changes a user or the group: each test gets its own folder, homes,
store and config, see make_deployment):
    svc     the service user (`releaser` in a deployment): owns the store, member
            of the publishers group, runs the monitor, the watcher and rollbacks
    alice   a data engineer (publishers group), builds in her own 0700 home
    carol   another data engineer (publishers group)
    oncall  an on-call engineer: in no group, may only read
    app     the application: reads the live database, nothing else
and runs the installed `releaser` as them with `setpriv --reuid --regid
--init-groups`. The kernel's fs.protected_hardlinks=1 (Debian's default) is what
makes mixed ownership hard; the tests insist on it.

The installed `releaser` of the test venv lives under the repository and an
interpreter that may sit in a 0700 home (/root/.pyenv): other users cannot run
it. So the session copies releaser and its runtime dependencies (pure Python)
into a world-readable folder under /tmp and runs them with a Python interpreter
every user can execute: the same code, installed where a service user can read it.
Its bytecode is written by importing what releaser imports with that interpreter
(not compileall over every file of every dependency: 4x the CPU for files never run).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO, config_text

ROLES = ("svc", "alice", "carol", "oncall", "app")
PUBLISHERS = ("svc", "alice", "carol")


def require_root() -> None:
    """Skip when not root (a one-line reason); never skip in CI."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("the permission tests need root to create users (CI runs as root)")
    pytest.skip("needs root to create real users and groups (run as root or in CI)")


def _others_can_run(path: Path) -> bool:
    """Every folder above path is o+x and path itself is o+rx."""
    path = Path(os.path.realpath(path))
    try:
        for parent in path.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


def _interpreter() -> str | None:
    """A Python >= 3.11 that every user may execute."""
    for cand in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not cand or not _others_can_run(Path(cand)):
            continue
        out = subprocess.run([cand, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return os.path.realpath(cand)
    return None


_IMPORT_ALL = """
import importlib, pkgutil, sys
import releaser
for m in pkgutil.walk_packages(releaser.__path__, "releaser."):
    if not m.name.startswith("releaser.fleet"):
        importlib.import_module(m.name)
# what is imported only when it runs: the monitor's scheduler, --help's wrapping
import apscheduler.executors.pool, apscheduler.jobstores.memory, click._textwrap
"""

_IMPORTED_DISTS = _IMPORT_ALL + """
import importlib.metadata as md
dists = md.packages_distributions()
print("\\n".join(sorted({d for name in list(sys.modules) for d in dists.get(
    name.split(".")[0], []) if name.split(".")[0] != "releaser"})))
"""


def _runtime_distributions() -> list[md.Distribution]:
    """The distributions releaser's modules (but the fleet's) import, as installed here:
    the fleet's boto3/botocore are large and not needed by these tests."""
    out = subprocess.run([sys.executable, "-c", _IMPORTED_DISTS], capture_output=True,
                         text=True, check=True).stdout.split()
    return [md.distribution(name) for name in out]


@dataclass
class Runtime:
    """A world-readable copy of releaser: `bin` is the releaser command to run."""

    root: Path
    bin: Path
    python: str

    @classmethod
    def build(cls) -> Runtime:
        python = _interpreter()
        if python is None:
            pytest.fail("no Python >= 3.11 that other users may execute (tried the test "
                        "interpreter and /usr/bin/python3)")
        root = Path(tempfile.mkdtemp(prefix="releaser-users-rt-", dir="/tmp"))
        site = root / "site"
        shutil.copytree(REPO / "releaser", site / "releaser",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dist in _runtime_distributions():
            for f in dist.files or []:
                src = Path(str(dist.locate_file(f)))
                if ".." in f.parts or not src.is_file() or "__pycache__" in f.parts:
                    continue
                dst = site / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        bindir = root / "bin"
        bindir.mkdir()
        exe = bindir / "releaser"
        exe.write_text(f"#!{python} -I\nimport sys\nsys.path.insert(0, {str(site)!r})\n"
                       "from releaser.cli import main\nmain()\n")
        # bytecode for every module releaser imports, written beside the copy (as root)
        subprocess.run([python, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n"
                        + _IMPORT_ALL], check=True)
        for dirpath, _dirs, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        os.chmod(exe, 0o755)
        return cls(root=root, bin=exe, python=python)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class User:
    name: str
    uid: int
    gid: int


@dataclass
class People:
    """The publishers group and the five users (ROLES), created once per session."""

    group: str
    gid: int
    users: dict[str, User]

    @classmethod
    def create(cls) -> People:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        people = cls(group=f"rlp{tag}", gid=0, users={})
        subprocess.run(["groupadd", people.group], check=True, capture_output=True)
        try:
            people.gid = int(subprocess.run(["getent", "group", people.group], check=True,
                                            capture_output=True, text=True).stdout.split(":")[2])
            for role in ROLES:
                name = f"rl{role[:2]}{tag}"
                # the home in passwd is never used: each test gives HOME its own folder
                argv = ["useradd", "--no-create-home", "--user-group", "--shell",
                        "/usr/sbin/nologin", "--home-dir", "/nonexistent"]
                if role in PUBLISHERS:
                    argv += ["--groups", people.group]
                subprocess.run([*argv, name], check=True, capture_output=True)
                pw = pwd.getpwnam(name)
                people.users[role] = User(name, pw.pw_uid, pw.pw_gid)
        except BaseException:
            people.remove()
            raise
        return people

    def remove(self) -> None:
        for u in self.users.values():
            subprocess.run(["userdel", u.name], capture_output=True)
        subprocess.run(["groupdel", self.group], capture_output=True)


@dataclass
class Deployment:
    """A store set up as `make install-systemd` does, with real users around it."""

    base: Path
    runtime: Runtime
    group: str
    gid: int
    users: dict[str, User]
    config: Path
    root: Path
    live: Path
    homes: dict[str, Path] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- running things as someone ---------------------------------------------

    def as_user(self, role: str, caps: tuple[str, ...] = ()) -> list[str]:
        """setpriv prefix; root runs as itself. caps: ambient capabilities (e.g. sys_ptrace)."""
        if role == "root":
            return []
        u = self.users[role]
        argv = ["setpriv", "--reuid", str(u.uid), "--regid", str(u.gid), "--init-groups"]
        if caps:
            spec = ",".join(f"+{c}" for c in caps)
            argv += ["--inh-caps", spec, "--ambient-caps", spec]
        return argv

    def env(self, role: str) -> dict[str, str]:
        home = str(self.homes.get(role, self.base))
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "LANG": "C.UTF-8",
                "USER": role, "LOGNAME": role}

    def run(self, role: str, *args: str, expect: int | None = 0, umask: int = 0o022,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`releaser --config CONFIG ARGS` as role."""
        argv = [*self.as_user(role), str(self.runtime.bin), "--config", str(self.config),
                *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env(role), umask=umask, cwd=self.base)
        if expect is not None:
            assert proc.returncode == expect, (
                f"{role}: releaser {' '.join(args)}: exit {proc.returncode} != {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def popen(self, role: str, argv: list[str], caps: tuple[str, ...] = (),
              **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen([*self.as_user(role, caps), *argv], env=self.env(role),
                                cwd=self.base, text=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def shell(self, role: str, command: str, expect: int | None = 0
              ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.as_user(role), "/bin/sh", "-c", command],
                              capture_output=True, text=True, env=self.env(role), timeout=30)
        if expect is not None:
            assert proc.returncode == expect, f"{role}: {command}: {proc.stderr}"
        return proc

    def app_reads(self) -> int:
        """The app user opens live_path read-only, as the app does: its row count."""
        proc = subprocess.run(
            [*self.as_user("app"), "sqlite3", "-readonly", str(self.live),
             "SELECT COUNT(*) FROM tags_final"],
            capture_output=True, text=True, env=self.env("app"), timeout=30)
        assert proc.returncode == 0 and proc.stdout.strip().isdigit(), (
            f"the app user cannot read {self.live}: {proc.stderr.strip()}")
        return int(proc.stdout)

    # -- builds ----------------------------------------------------------------

    def build(self, role: str, name: str, rows: int, seed: int) -> Path:
        """A real tags.db owned by role, mode 0600, in role's own 0700 home."""
        from tests.sample import write_sample
        home = self.homes[role]
        path = home / name
        write_sample(path, rows=rows, seed=seed)
        if role != "root":
            u = self.users[role]
            os.chown(path, u.uid, u.gid)
        os.chmod(path, 0o600)
        return path

    def state_rows(self, sql: str) -> list[tuple[object, ...]]:
        """Read state.db as root, the way releaser's readers do: a -wal/-shm this reader
        creates is group-writable from creation (else the monitor, writing as the service
        user in that instant, gets "attempt to write a readonly database")."""
        from releaser.access import group_writable_umask
        conn = sqlite3.connect(f"file:{self.root / 'state.db'}?mode=ro", uri=True)
        try:
            with group_writable_umask():
                return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def events(self) -> list[tuple[str, str, int | None, str]]:
        return [tuple(r) for r in self.state_rows(  # type: ignore[misc]
            "SELECT action, outcome, release_id, actor FROM events ORDER BY id")]

    def owner_of(self, path: Path) -> str:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name

    def role_of(self, path: Path) -> str:
        uid = os.stat(path).st_uid
        for role, u in self.users.items():
            if u.uid == uid:
                return role
        return "root" if uid == 0 else str(uid)

    # -- teardown --------------------------------------------------------------

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with _quiet():
                proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def make_deployment(runtime: Runtime, people: People, extra_config: str = "") -> Deployment:
    """A store prepared as `make install-systemd` prepares /var/lib/releaser, in a folder
    of its own, for the session's group and users."""
    users = people.users
    base = Path(tempfile.mkdtemp(prefix="releaser-users-", dir="/tmp"))
    os.chmod(base, 0o755)
    dep = Deployment(base=base, runtime=runtime, group=people.group, gid=people.gid,
                     users=users, config=base / "releaser.toml", root=base / "store",
                     live=base / "app" / "tags.db")
    try:
        (base / "home").mkdir(mode=0o755)
        for role in (*ROLES, "root"):
            home = base / "home" / role
            home.mkdir(mode=0o700)
            os.chmod(home, 0o700)  # whatever the umask
            if role != "root":
                os.chown(home, users[role].uid, users[role].gid)
            dep.homes[role] = home
        svc = users["svc"]
        # what `make install-systemd` does for /var/lib/releaser and the live folder
        for d in (dep.root, dep.live.parent):
            subprocess.run(["install", "-d", "-o", str(svc.uid), "-g", dep.group, "-m", "2775",
                            str(d)], check=True)
        text = config_text(dep.live, dep.root)
        if "[monitor]" in extra_config:
            text = re.sub(r"(?ms)^\[monitor\]\n.*?(?=^\[|\Z)", "", text)
        dep.config.write_text(text + "\n" + extra_config)
        os.chmod(dep.config, 0o644)
    except BaseException:
        dep.close()
        raise
    return dep
