"""Packaging: the distribution's metadata, its license, and the command it installs."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from releaser import __version__

REPO = Path(__file__).resolve().parent.parent
DIST = "sqlite-releaser"


def test_distribution_metadata_is_complete() -> None:
    dist = importlib.metadata.distribution(DIST)
    md = dist.metadata
    assert md["Version"] == __version__
    assert md["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (md.get_all("License-File") or [])
    assert md["Author"], "authors are missing"
    assert md["Summary"] and "sqlite" in (md["Keywords"] or "")
    # no Project-URL until the project has a public address: a guessed one would send
    # users to somebody else's repository
    assert not md.get_all("Project-URL")
    classifiers = md.get_all("Classifier") or []
    assert "Topic :: Database" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    # the distribution is sqlite-releaser, the command stays `releaser`
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"releaser": "releaser.cli:main"}


def test_license_file_is_the_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert len(text) > 10_000  # the whole text, not a pointer to it
