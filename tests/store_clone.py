"""A store built once (init + publishes, through the CLI) and cloned for each test.

Building a store with two releases costs two in-process publishes (staging, gates,
hashes, fsyncs); a clone costs a few hard links and copies. The clone is the same
store the publishes produced, with these invariants:

- release files (`release-N.db`) are hard links: the same inode and mtime that state.db
  and the manifests recorded, so `status`/`check` see the files as placed. Release files
  are never written in place (new file, fsync, rename), so the template cannot change
  through a clone; tests that damage a release file must not use a clone.
- everything else in the store (state.db and any -wal, journal.jsonl, manifests, lock)
  is copied with its mtime (not a -shm: SQLite rebuilds it): the clone writes its own.
- the live symlink is re-pointed at the same relative place in the clone's store
  (the store keeps it absolute); state.db holds no store path apart from the staging
  path in old publish reports, which nothing reads back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from releaser.store import RELEASE_FILE_RE

from .conftest import Env, env_in, publish_two


@pytest.fixture(scope="module")
def published_template(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """conftest's `published` store (releases 1 idle, 2 live, from the 3,000-row samples
    seeds 1 and 2, published through the CLI), built once per module that imports it."""
    return publish_two(env_in(tmp_path_factory.mktemp("published-template")))


@pytest.fixture(name="published")
def cloned_published(env: Env, published_template: Env) -> Env:
    """conftest's `published`, cloned from the module's template (clone_store): for a
    module whose cases cost less than two publishes and never damage a release file.
    A module that imports it (and published_template) gets it as its `published`."""
    return clone_store(published_template, env)


def clone_store(template: Env, env: Env) -> Env:
    """Make env's store (root and live symlink) a clone of template's; returns env."""
    for folder, _dirs, files in os.walk(template.root):
        rel = Path(folder).relative_to(template.root)
        (env.root / rel).mkdir(parents=True, exist_ok=True)
        shutil.copystat(folder, env.root / rel)
        for name in files:
            src, dst = Path(folder, name), env.root / rel / name
            if src.is_symlink():
                raise AssertionError(f"unexpected symlink in the template store: {src}")
            if RELEASE_FILE_RE.match(name):
                os.link(src, dst)
            elif not name.endswith("-shm"):  # SQLite rebuilds the shared-memory index
                shutil.copy2(src, dst)
    if template.live.is_symlink():
        target = Path(os.readlink(template.live)).relative_to(template.root)
        env.live.parent.mkdir(parents=True, exist_ok=True)
        shutil.copystat(template.live.parent, env.live.parent)
        os.symlink(env.root / target, env.live)
    return env
