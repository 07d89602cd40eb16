"""A real systemd for tests: a cached Debian bookworm tree booted with systemd-nspawn.

    python3 -m tests.nspawn build-image     # `make systemd-image`: debootstrap once, cache
    python3 -m tests.nspawn path            # the cached tarball's path

Invariants:
- The image is a tarball under CACHE named for the sha256 of what goes into it (suite,
  packages, recipe): a changed package list builds a new one, an unchanged one is
  reused, and a half-built one is never seen (written under a temp name, renamed).
  It is extracted once beside itself; each boot mounts an overlay on that tree (a
  private upper layer), so the cached tree is never written and a boot costs no copy.
  The upper layer is on a tmpfs of its own (RAM, gone at remove()): the install writes
  and deletes a venv of ~4,000 files, which on the host's disk (ext4 -o discard) cost
  seconds of I/O wait.
- The host has no systemd or D-Bus: the container is booted with --register=no
  --keep-unit, and commands run inside with nsenter into all of the init's namespaces,
  with a clean environment (PATH, HOME, LANG, and the host's PIP_* settings).
- Each container gets its own cgroup (below the caller's, in the unified and the
  name=systemd hierarchies) for nspawn's payload/supervisor groups, so two containers
  never share one, and poweroff() removes it: nothing is left behind.
- Every wait is bounded; poweroff() kills nspawn when a clean poweroff takes too long.
- The host's extra CA certificates and pip configuration are copied in before boot,
  so pip inside reaches the package registry as it does on the host; what
  update-ca-certificates makes of those CAs is cached beside the image (keyed on them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# what the README's install steps need: make, python3-venv (install-systemd's venv),
# python3-pip (installs into that venv: no ensurepip), sudo (`sudo -u releaser
# releaser ...`), sqlite3, curl (/healthz), procps (ps)
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-pip",
            "ca-certificates", "make", "sqlite3", "curl", "sudo", "procps")
# bump when the recipe below changes in a way the package list does not show
RECIPE = 1
# timers and gettys a test boot does not need (a faster, quieter boot)
MASK = ("console-getty.service", "getty@tty1.service", "apt-daily.timer",
        "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
        "fstrim.timer", "systemd-timesyncd.service")
CACHE = Path(os.environ.get("RELEASER_TEST_CACHE", "/var/cache/releaser-test"))
HOST_CAS = Path("/usr/local/share/ca-certificates")
# the container's writes (checkout, venv, pip's build, journal) fit well within this
SCRATCH_SIZE = "2g"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"),
                Path("/sys/fs/cgroup"))
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image_key() -> str:
    recipe = {"suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
              "mask": sorted(MASK), "recipe": RECIPE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def image_path() -> Path:
    return CACHE / f"{SUITE}-systemd-{image_key()}.tar"


def unavailable() -> str | None:
    """Why a container cannot run here (None when it can)."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (apt-get install systemd-container debootstrap)"
    return None


def build_image(*, log: bool = True) -> Path:
    """The cached tarball, built with debootstrap when missing (1-2 minutes)."""
    out = image_path()
    if out.exists():
        extracted_tree(out)
        if HOST_CAS.is_dir():
            ca_layer(out)
        if log:
            print(f"systemd image: {out} (cached)")
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    tree = work / "root"
    try:
        t0 = time.monotonic()
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(tree), MIRROR],
            check=True, timeout=900, stdout=None if log else subprocess.DEVNULL)
        (tree / "etc/hostname").write_text("releaser-test\n")
        for unit in MASK:
            (tree / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (tree / "etc/systemd/system" / unit).symlink_to("/dev/null")
        # a smaller tarball: the downloaded .debs and apt lists are not needed to boot
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (tree / d).glob("*"):
                if p.is_file():
                    p.unlink()
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "-cpf",
                        str(tmp), "."], check=True, timeout=600)
        os.replace(tmp, out)
        extracted_tree(out)
        if HOST_CAS.is_dir():
            ca_layer(out)
        if log:
            print(f"systemd image: built {out} in {time.monotonic() - t0:.0f} s")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def extracted_tree(image: Path) -> Path:
    """The tarball extracted once beside it (the read-only lower layer of each boot)."""
    tree = image.with_suffix(".tree")
    if tree.is_dir():
        return tree
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=image.parent))
    try:
        subprocess.run(["tar", "-C", str(tmp), "--numeric-owner", "--xattrs", "-xpf",
                        str(image)], check=True, timeout=600)
        try:
            tmp.rename(tree)
        except OSError:  # another session extracted it meanwhile
            if not tree.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tree


# -- the host's CA certificates, inside ----------------------------------------

def _update_cas(tree: Path) -> None:
    """The host's extra CAs copied into tree and update-ca-certificates run there."""
    dest = tree / "usr/local/share/ca-certificates"
    dest.mkdir(parents=True, exist_ok=True)
    for p in HOST_CAS.rglob("*"):
        if p.is_file():
            target = dest / p.relative_to(HOST_CAS)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    # not the host's TMPDIR: a host path (e.g. a tmpfs) the tree does not have
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    subprocess.run(["chroot", str(tree), "update-ca-certificates"], check=True,
                   timeout=120, capture_output=True, env=env)


def ca_layer(image: Path) -> Path | None:
    """What _update_cas writes over the image's tree, as a tarball cached beside the image,
    keyed on the host's CA files (update-ca-certificates takes 2 s of CPU, 5 s under load,
    on every boot otherwise). None when it removed a file (an overlay whiteout a tarball
    cannot replay): then each boot runs it."""
    h = hashlib.sha256()
    for p in sorted(p for p in HOST_CAS.rglob("*") if p.is_file()):
        h.update(f"{p.relative_to(HOST_CAS)}\0".encode() + p.read_bytes() + b"\0")
    out = image.with_name(f"{image.stem}.ca-{h.hexdigest()[:16]}.tar")
    if out.exists():
        return out
    work = Path(tempfile.mkdtemp(prefix=".ca-", dir=image.parent))
    try:
        upper, scratch, root = work / "upper", work / "work", work / "root"
        for d in (upper, scratch, root):
            d.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={extracted_tree(image)},upperdir={upper},workdir={scratch}",
                        str(root)], check=True, capture_output=True, timeout=30)
        try:
            _update_cas(root)
        finally:
            subprocess.run(["umount", str(root)], check=True, timeout=30)
        if any(p.is_char_device() for p in upper.rglob("*")):
            return None
        tops = sorted(p.name for p in upper.iterdir() if p.name != "tmp")
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        subprocess.run(["tar", "-C", str(upper), "--numeric-owner", "-cpf", str(tmp), *tops],
                       check=True, timeout=60)
        os.replace(tmp, out)
        return out
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False, timeout=60)


# -- pip configuration to replicate inside ----------------------------------

def _pip_config_files() -> list[Path]:
    home = Path(os.environ.get("HOME", "/root"))
    files = [Path("/etc/pip.conf"), home / ".pip/pip.conf", home / ".config/pip/pip.conf"]
    xdg = Path("/etc/xdg/pip")
    if xdg.is_dir():
        files += sorted(p for p in xdg.iterdir() if p.is_file())
    return [f for f in files if f.is_file()]


def _pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def _paths_named_in(texts: Sequence[str]) -> set[Path]:
    """Local folders a pip setting points at (find-links, file:// indexes, constraints)."""
    found: set[Path] = set()
    for text in texts:
        for token in text.replace("=", " ").split():
            token = token.removeprefix("file://")
            if not token.startswith("/"):
                continue
            p = Path(token)
            if p.exists() and not str(p).startswith(("/etc/", "/usr/", "/proc/", "/sys/")):
                p = p if p.is_dir() else p.parent
                # a file:// index's pages link to files beside its simple/ folder
                found.add(p.parent if p.name == "simple" else p)
    return found


# -- the container ---------------------------------------------------------

class Container:
    """One booted systemd in `tree` (an extracted image)."""

    def __init__(self, tree: Path, name: str = "releaser-test") -> None:
        self.tree = tree
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.cgroups: list[Path] = []
        self.overlay = False
        self.scratch: Path | None = None  # the tmpfs holding the overlay's upper layer
        self.image: Path | None = None  # the tarball the tree came from
        self.console = tree.parent / f"{name}.console.log"

    @classmethod
    def from_image(cls, image: Path, parent: Path, name: str = "releaser-test") -> Container:
        """A writable tree: an overlay on the cached extracted image (instant), else a
        fresh extraction of the tarball."""
        tree = parent / "root"
        tree.mkdir()
        c = cls(tree, name)
        c.image = image
        lower = extracted_tree(image)
        scratch = parent / "rw"
        scratch.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SCRATCH_SIZE},mode=0755",
                           "tmpfs", str(scratch)], capture_output=True, timeout=30
                          ).returncode == 0:
            c.scratch = scratch
        upper, work = scratch / "upper", scratch / "work"
        upper.mkdir()
        work.mkdir()
        mount = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={upper},workdir={work}", str(tree)],
            capture_output=True, timeout=30)
        if mount.returncode == 0:
            c.overlay = True
        else:
            subprocess.run(["tar", "-C", str(tree), "--numeric-owner", "--xattrs", "-xpf",
                            str(image)], check=True, timeout=300)
        return c

    def remove(self) -> None:
        """Delete the tree (after poweroff): unmount the overlay, remove what is ours."""
        if self.overlay:
            subprocess.run(["umount", str(self.tree)], check=True, timeout=30)
            self.overlay = False
        if self.scratch is not None:
            subprocess.run(["umount", str(self.scratch)], check=True, timeout=30)
            self.scratch = None
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.tree),
                        str(self.tree.parent / "rw")], check=False, timeout=120)

    # -- before boot ---------------------------------------------------------

    def prepare_host_settings(self) -> list[str]:
        """Copy the host's CA certificates and pip config in; nspawn --bind-ro options."""
        if HOST_CAS.is_dir():
            layer = ca_layer(self.image) if self.image is not None else None
            if layer is not None:  # what update-ca-certificates wrote, cached
                subprocess.run(["tar", "-C", str(self.tree), "--numeric-owner", "-xpf",
                                str(layer)], check=True, timeout=60)
            else:
                _update_cas(self.tree)
        # nspawn names the host after the machine: let it resolve (sudo asks)
        with open(self.tree / "etc/hosts", "a") as hosts:
            hosts.write(f"127.0.1.1\t{self.name} releaser-test\n")
        texts = list(_pip_env().values())
        for f in _pip_config_files():
            target = self.tree / f.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            texts.append(f.read_text())
        return [f"--bind-ro={p}" for p in sorted(_paths_named_in(texts))]

    # -- boot / poweroff -------------------------------------------------------

    def _own_cgroups(self) -> None:
        """A fresh cgroup below ours in each hierarchy nspawn uses, for it alone."""
        mine = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            mine[controllers] = path
        for root, key in ((Path("/sys/fs/cgroup/unified"), ""),
                          (Path("/sys/fs/cgroup/systemd"), "name=systemd"),
                          (Path("/sys/fs/cgroup"), "")):
            if key not in mine or not (root / "cgroup.procs").exists():
                continue
            if root == Path("/sys/fs/cgroup") and Path("/sys/fs/cgroup/unified").exists():
                continue  # hybrid: the unified hierarchy is the one above
            cg = root / mine[key].lstrip("/") / f"{self.name}-{os.getpid()}"
            cg.mkdir(exist_ok=True)
            self.cgroups.append(cg)

    def _enter_cgroups(self) -> None:  # runs in the child before exec
        for cg in self.cgroups:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    def boot(self, *, extra: Sequence[str] = (), timeout: float = 60) -> None:
        binds = self.prepare_host_settings()
        self._own_cgroups()
        cmd = ["systemd-nspawn", "-D", str(self.tree), "-b", "--register=no", "--keep-unit",
               "--console=passive", f"--machine={self.name}", *binds, *extra]
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=self._enter_cgroups)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: "
                                   f"{self.console.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the container's init did not appear")
            self.leader = self._find_leader()
            time.sleep(0.1)
        # boot finished (running or degraded) before anything is run; until the
        # manager's bus is up, systemctl fails at once (no --wait possible)
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the container did not finish booting ({state!r}): "
                                   f"{self.run(['systemctl', '--failed'], check=False).stdout}")
            time.sleep(0.2)
            state = self.run(["systemctl", "is-system-running"], check=False,
                             timeout=10).stdout.strip()

    def _find_leader(self) -> int | None:
        """The container's PID 1: pid 1 in its own namespace, in our cgroup's payload.

        (Its /proc/PID/root reads "/" after nspawn's pivot_root: the cgroup tells.)
        """
        mine = {f"/{cg.relative_to(root).as_posix()}/"
                for cg in self.cgroups for root in CGROUP_ROOTS if cg.is_relative_to(root)}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
                groups = Path(f"/proc/{entry.name}/cgroup").read_text()
            except OSError:
                continue
            nspid = next((ln.split()[1:] for ln in status.splitlines()
                          if ln.startswith("NSpid:")), [])
            if len(nspid) < 2 or nspid[-1] != "1":
                continue
            paths = {ln.split(":", 2)[2] + "/" for ln in groups.splitlines()}
            if any(p.startswith(m) for p in paths for m in mine):
                return int(entry.name)
        return None

    def poweroff(self, timeout: float = 30) -> None:
        """Power off (or kill) the container and remove its cgroups. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            if self.leader is not None:
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
            else:
                self.proc.terminate()  # nspawn: an orderly shutdown of the container
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self._kill_leftovers()
        self._remove_cgroups()

    def _kill_leftovers(self) -> None:
        """Whatever still runs in our cgroups (nspawn killed before its container)."""
        for cg in self.cgroups:
            kill = cg / "cgroup.kill"
            if kill.exists() and (cg / "cgroup.events").exists():
                if "populated 1" in (cg / "cgroup.events").read_text():
                    kill.write_text("1")
            else:  # v1: signal every process listed below it
                for procs in cg.rglob("cgroup.procs"):
                    for pid in procs.read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    def _remove_cgroups(self) -> None:
        for cg in self.cgroups:
            deadline = time.monotonic() + 10
            while cg.exists():
                try:
                    for d in sorted((p for p in cg.rglob("*") if p.is_dir()),
                                    key=lambda p: len(p.parts), reverse=True):
                        d.rmdir()
                    cg.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        self.cgroups.clear()

    # -- inside ----------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """argv inside the container as root, with a clean environment."""
        assert self.leader is not None, "not booted"
        base = {"PATH": INSIDE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                **_pip_env(), **(env or {})}
        cmd = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r",
               "-w", "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else
                              subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"inside the container: {' '.join(argv)} exited "
                                 f"{proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                                 f"stderr:\n{proc.stderr[-4000:]}")
        return proc

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["bash", "-euo", "pipefail", "-c", script], **kwargs)  # type: ignore[arg-type]

    def wait_for(self, script: str, *, timeout: float, every: float = 0.25,
                 what: str = "") -> str:
        """Run script until it exits 0 (its stdout), failing after timeout seconds."""
        deadline = time.monotonic() + timeout
        last: subprocess.CompletedProcess[str] | None = None
        while time.monotonic() < deadline:
            last = self.sh(script, check=False, timeout=max(5.0, deadline - time.monotonic()))
            if last.returncode == 0:
                return last.stdout
            time.sleep(every)
        detail = f"\nstdout: {last.stdout[-2000:]}\nstderr: {last.stderr[-2000:]}" if last else ""
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what or script}{detail}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["build-image"]:
        reason = unavailable()
        if reason:
            # elsewhere the test skips with the same reason; CI must have what it needs
            print(f"systemd image: not built: {reason}", file=sys.stderr)
            return 1 if os.environ.get("CI") == "true" else 0
        build_image()
        return 0
    if argv[:1] == ["path"]:
        print(image_path())
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
