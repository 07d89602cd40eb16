"""Run `releaser` with fault points installed from the test side.

    python tests/faults.py [--pause-at STEP] [--setup CODE] -- releaser ARGS...

Production code has no test switches: this runner imports the releaser package,
wraps the named functions (in every releaser module that refers to them), then calls
`releaser.cli.main()` exactly as the installed console script does.

--pause-at STEP   at a named pipeline step (STEPS below) write
                  "releaser-fault: STEP" to stderr and sleep, so a test can SIGKILL or
                  signal the process there
--setup CODE      Python run before main() with `patch`, `pause`, `signal_self`, `os`,
                  `signal`, `errno` in scope, e.g.
                  patch("check_live", before=lambda *a, **k: signal_self(signal.SIGTERM))

A target is a dotted name: `os.replace`, `releaser.store.Store.swap`, or just a
function or `Class.method` name defined somewhere in the releaser package
(`reconcile`, `Store.swap`), found wherever it lives.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAULTS = Path(__file__).resolve()

# named steps: (when, target, nth call); "after" pauses once the call returned
STEPS: dict[str, tuple[str, str, int]] = {
    "locked": ("before", "reconcile", 1),
    "staged": ("after", "Store.stage", 1),
    "gated": ("after", "run_gates", 1),
    "placed": ("after", "Store.place", 1),
    "swapped": ("before", "check_after_swap", 1),  # the swap is whole (signals deferred)
    "recorded": ("before", "prune_archive", 1),
    "rollback_ready": ("after", "_target_problem", 1),
    "rollback_swapped": ("after", "Store.swap", 1),
}


def argv(*releaser_args: str, pause_at: str | None = None, setup: str | None = None
         ) -> list[str]:
    """The command line a test runs instead of the `releaser` console script."""
    cmd = [sys.executable, str(FAULTS)]
    if pause_at:
        cmd += ["--pause-at", pause_at]
    if setup:
        cmd += ["--setup", setup]
    return [*cmd, "--", *releaser_args]


def _loaded() -> list[Any]:
    """The releaser modules imported so far (the ones that may hold a reference)."""
    return [m for name, m in sorted(sys.modules.items())
            if name == "releaser" or name.startswith("releaser.")]


def _defining_modules(name: str) -> list[str]:
    """releaser modules whose source defines `name` at top level (def or class), by name.

    Read from the source text instead of importing every module: the runner imports only
    the module that defines the target (~250 ms of CPU less per run than importing all
    ~70 with their notify/http/prometheus/apscheduler imports). A module imported later
    binds the wrapper, since `from .x import name` reads the patched attribute.
    """
    import releaser

    found = re.compile(rf"^(?:async\s+def|def|class)\s+{re.escape(name)}\b", re.M)
    names = []
    for info in pkgutil.iter_modules(releaser.__path__, "releaser."):
        if info.ispkg:  # the fleet subpackage (boto3...) is not a fault target
            continue
        source = Path(releaser.__path__[0], info.name.rsplit(".", 1)[1] + ".py")
        if source.is_file() and found.search(source.read_text()):
            names.append(info.name)
    return sorted(names)


def _find(target: str) -> list[tuple[Any, str, Any]]:
    """(owner, attribute, original) for every reference to target."""
    if target.startswith(("os.", "time.", "subprocess.", "fcntl.", "sqlite3.")):
        mod_name, attr = target.rsplit(".", 1)
        owner = importlib.import_module(mod_name)
        return [(owner, attr, getattr(owner, attr))]
    parts = target.split(".")
    if target.startswith("releaser."):
        # a full dotted path: the longest importable module, then attributes
        for i in range(len(parts) - 1, 0, -1):
            try:
                owner: Any = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for p in parts[i:-1]:
                owner = getattr(owner, p)
            parts = [*parts[i:]]
            break
        original = getattr(owner, parts[-1])
        if isinstance(owner, type):
            return [(owner, parts[-1], original)]
        return _references(original)
    if len(parts) == 2:  # Class.method, the class defined in releaser
        for mod_name in _defining_modules(parts[0]):
            m = importlib.import_module(mod_name)
            cls = vars(m).get(parts[0])
            if isinstance(cls, type) and cls.__module__ == m.__name__ and parts[1] in vars(cls):
                return [(cls, parts[1], vars(cls)[parts[1]])]
        raise SystemExit(f"faults: no class {parts[0]} with {parts[1]} in releaser")
    for mod_name in _defining_modules(target):
        m = importlib.import_module(mod_name)
        fn = vars(m).get(target)
        if callable(fn) and getattr(fn, "__module__", None) == m.__name__:
            return _references(fn)
    raise SystemExit(f"faults: no function {target} in releaser")


def _references(original: Any) -> list[tuple[Any, str, Any]]:
    return [(m, name, value) for m in _loaded() for name, value in list(vars(m).items())
            if value is original]


def patch(target: str, *, before: Callable[..., Any] | None = None,
          after: Callable[..., Any] | None = None, nth: int | None = None) -> None:
    """Wrap target: before(*args, **kw) runs first, after(result, *args, **kw) once it
    returned. nth: only on that call (1-based)."""
    refs = _find(target)
    original = refs[0][2]
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        active = nth is None or calls[0] == nth
        if active and before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if active and after is not None:
            after(result, *args, **kwargs)
        return result

    for owner, attr, _ in refs:
        setattr(owner, attr, wrapper)


def pause(label: str) -> None:
    os.write(2, f"releaser-fault: {label}\n".encode())
    time.sleep(3600)


def signal_self(sig: int) -> None:
    """Deliver sig now; Python runs its handler before the next bytecode."""
    os.kill(os.getpid(), sig)


def pause_at(step: str) -> None:
    when, target, nth = STEPS[step]
    if when == "before":
        patch(target, before=lambda *a, **k: pause(step), nth=nth)
    else:
        patch(target, after=lambda *a, **k: pause(step), nth=nth)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pause-at", choices=sorted(STEPS))
    ap.add_argument("--setup")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.pause_at:
        pause_at(args.pause_at)
    if args.setup:
        exec(args.setup, {"patch": patch, "pause": pause, "signal_self": signal_self,  # noqa: S102
                          "os": os, "signal": signal, "errno": errno, "time": time})
    from releaser.cli import main as releaser_main

    sys.argv = ["releaser", *rest]
    releaser_main()


if __name__ == "__main__":
    main()
