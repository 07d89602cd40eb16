"""releaser: blue-green releases for SQLite databases."""

__version__ = "0.1.0"
