"""Who may do what: modes of the store, permission checks with hints, capabilities.

The permission model (README "Users and permissions"): the store is owned by the
service user and group-writable by the publishers' group (folders 2775, setgid, so
what is created inside gets the group); state.db and lock are 0664; release files
0444. Invariants kept here:
- modes are set explicitly (fchmod/chmod), never left to the umask; SQLite's own
  -wal/-shm are created under group_writable_umask() (state.db's mode from creation);
- a permission problem is found before anything changes, and is reported as one
  line naming the path, the user, and what to do (a UsageError: exit 2);
- a process count this user cannot see is "unknown", never zero.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

DIR_MODE = 0o2775  # store folders: group-writable, setgid
SHARED_FILE_MODE = 0o664  # state.db, lock
RELEASE_MODE = 0o444  # release files: never written
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
GUIDE = 'see README "Users and permissions"'


def user_name() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group} {stat.S_IMODE(st.st_mode):04o}"


def group_of(path: Path) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (KeyError, OSError):
        return "the store's group"


def _chmod(path: Path | int, mode: int) -> None:
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


def set_mode(path: Path | int, mode: int) -> None:
    """chmod to exactly mode; a path we do not own but that already has it is fine.

    Under systemd's RestrictSUIDSGID= a chmod asking for the setgid bit is refused:
    then the folder keeps the group rights without it (what is created inside then
    takes the creator's group: the units run with Group=releasers)."""
    st = os.fstat(path) if isinstance(path, int) else os.stat(path)
    if stat.S_IMODE(st.st_mode) == mode:
        return
    try:
        try:
            _chmod(path, mode)
        except PermissionError:
            if not mode & stat.S_ISGID or st.st_uid != os.geteuid():
                raise
            _chmod(path, mode & ~stat.S_ISGID)
    except PermissionError:
        if stat.S_IMODE(st.st_mode) != mode:
            where = path if not isinstance(path, int) else "a store file"
            raise UsageError(
                f"{where}: mode {stat.S_IMODE(st.st_mode):04o}, should be {mode:04o}, and user "
                f"{user_name()} may not change it ({_owner(st)}); run `releaser init` as its "
                f"owner or root ({GUIDE})") from None


@contextmanager
def group_writable_umask() -> Iterator[None]:
    """Around opening state.db and its first statement (when SQLite creates -wal/-shm).

    SQLite creates them with open(O_CREAT, state.db's mode) and only then fchmods (and,
    as root, fchowns) them: under a umask of 022 or 077 they are briefly 0644/0600, and
    a publisher or the monitor opening state.db in that instant gets a read-only WAL
    ("attempt to write a readonly database") while `releaser status` runs as root or
    on-call. Clearing the umask's group bits makes them group-writable from creation.
    The umask is per process: another thread creating a file meanwhile gets group
    bits, which every file of ours sets explicitly anyway."""
    old = os.umask(0o002)
    os.umask(old & ~0o070)
    try:
        yield
    finally:
        os.umask(old)


def make_dir(path: Path, mode: int = DIR_MODE) -> None:
    """mkdir -p with an explicit mode on every folder created (and on path)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        set_mode(d, mode)
    if not missing:
        set_mode(path, mode)


def _first_blocked_folder(path: Path) -> Path | None:
    """The first folder on the way to path this user may not enter (search, x)."""
    p = path.absolute()
    for folder in reversed(p.parents):
        if not os.access(folder, os.X_OK):
            return folder
    return None


def source_problem(source: Path) -> str | None:
    """Why this user cannot read a build, as one line with a hint; None when it can."""
    blocked = _first_blocked_folder(source)
    if blocked is not None:
        try:
            owner = _owner(os.stat(blocked))
        except OSError:
            owner = "?"
        return (f"{source}: permission denied: user {user_name()} cannot enter {blocked} "
                f"({owner}); put the build where {user_name()} can read it, or publish as "
                f"its owner ({GUIDE})")
    try:
        st = os.stat(source)
    except PermissionError:
        return f"{source}: permission denied for user {user_name()} ({GUIDE})"
    except OSError:
        return None  # missing etc.: the caller says so
    if not stat.S_ISDIR(st.st_mode) and not os.access(source, os.R_OK):
        return (f"{source}: permission denied: user {user_name()} cannot read it "
                f"({_owner(st)}); make it readable (chmod g+r or o+r) or publish as its "
                f"owner ({GUIDE})")
    return None


def ensure_writable(paths: list[Path], store_root: Path) -> None:
    """Raise a one-line UsageError (exit 2) when this user cannot write one of paths.
    Root is not checked: what stops root is not the permission model (an immutable
    folder, a read-only mount), and the operation's own error says so."""
    if os.geteuid() == 0:
        return
    for p in paths:
        if not p.exists():
            continue
        if not os.access(p, os.W_OK):
            try:
                owner = _owner(os.stat(p))
            except OSError:
                owner = "?"
            raise UsageError(
                f"{p}: Permission denied: user {user_name()} cannot write it ({owner}); "
                f"publishers must be in group {group_of(store_root)} (usermod -aG "
                f"{group_of(store_root)} {user_name()}, then log in again; {GUIDE})")


def is_permission_error(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (
        errno.EACCES, errno.EPERM)


def app_access_problems(release_file: Path, folders: list[Path]) -> list[str]:
    """Why the app (another user) could not open the live release: not o+r, or a
    store folder on the way without o+x. Folders above the store are the deployer's."""
    problems = []
    for d in folders:
        try:
            mode = os.stat(d).st_mode
        except OSError:
            continue
        if not mode & stat.S_IXOTH:
            problems.append(f"{d}: others cannot enter it (mode {stat.S_IMODE(mode):04o}), so "
                            f"the app cannot reach the live release; chmod o+x {d}")
    try:
        mode = os.stat(release_file).st_mode
    except OSError:
        return problems
    if not mode & stat.S_IROTH:
        problems.append(f"{release_file}: not readable by others (mode "
                        f"{stat.S_IMODE(mode):04o}), so the app cannot open it; chmod 0444 it")
    return problems


# -- capabilities: who can see the app's /proc/PID/fd --------------------------------


def _cap_set(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_see_other_users_processes() -> bool:
    """Another user's /proc/PID/fd is a 0500 folder of theirs (listing it needs
    CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE) whose links only a ptrace-capable reader
    may resolve (CAP_SYS_PTRACE). Root has all three."""
    eff = _cap_set("CapEff")
    dac = eff >> CAP_DAC_READ_SEARCH & 1 or eff >> CAP_DAC_OVERRIDE & 1
    return bool(dac and eff >> CAP_SYS_PTRACE & 1)


def drop_inheritable_capabilities() -> bool:
    """Empty the inheritable set, which empties the ambient set too: children (hooks)
    start without the capabilities this process was given. Keeps effective/permitted.
    Returns False when there was nothing to drop or it could not be done."""
    if not _cap_set("CapInh") and not _cap_set("CapAmb"):
        return False
    import ctypes  # only here: ctypes costs every command a few ms of start-up

    class _CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        data = (_CapData * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            return False
        for d in data:
            d.inheritable = 0
        return libc.capset(ctypes.byref(header), data) == 0
    except (OSError, AttributeError):
        return False
