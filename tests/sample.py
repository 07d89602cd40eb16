"""Generate a realistic sample tags.db (for the demo, tests and benchmarks).

The shape follows a real tag database (140,782 Danbooru-style tags): about 96.5 %
of rows have a main_category, about 7 % carry a classification_confidence
(0.6-1.0, mean about 0.87), post_count is heavy-tailed from 400 to about 96 M
with about 0.5 % of tags above 1 M posts, and the biggest tags are the familiar
ones ("1girl", "highres", "solo", ...).

    python -m tests.sample output/tags.db --rows 140000 --seed 1   # from the repo root

Not part of the installed package: nothing at runtime needs it (`make demo`, the
tests and bench/bench.py do).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

TABLE_SQL = """
CREATE TABLE tags_final (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    main_category TEXT,
    sub_category TEXT,
    classification_source TEXT,
    classification_confidence REAL,
    post_count INTEGER NOT NULL DEFAULT 0
)
"""
INDEX_SQL = (
    "CREATE INDEX idx_tags_post_count ON tags_final(post_count)",
    "CREATE INDEX idx_tags_main_category ON tags_final(main_category, sub_category)",
)

# (main_category, weight) from the reference data; None is an unclassified tag
CATEGORIES = [
    ("ARTIST", 59196), ("CHARACTER", 40930), ("CHARACTER_RELATED", 10255),
    ("COPYRIGHT", 9474), ("OBJECTS", 6153), (None, 4841), ("ACTION_POSE", 2565),
    ("ADULT_CONTENT", 1621), ("THEME_CONCEPT", 1618), ("ENVIRONMENT", 1078),
    ("TECHNICAL", 1066), ("VISUAL_EFFECTS", 781), ("ART_STYLE", 735), ("COMPOSITION", 442),
]
SUB_CATEGORIES = {
    "CHARACTER_RELATED": ["CLOTHING", "BODY_PARTS", "HAIR", "ACCESSORIES", "EXPRESSION"],
    "OBJECTS": ["WEAPONS", "FOOD", "MISCELLANEOUS"],
    "ACTION_POSE": ["POSE", "GESTURE", "BODY_POSE"],
    "ADULT_CONTENT": ["SEXUAL", "EXPLICIT_BODY"],
    "THEME_CONCEPT": ["CONCEPT"],
}
SOURCES = [
    ("phase2_3_1k_3k_batch", 0.845), ("phase2_1_5k_10k_batch", 0.865),
    ("phase2_2_3k_5k_batch", 0.859), ("phase1_4_10k_20k_batch", 0.910),
    ("optimized_llm_batch", 0.933), ("medium_freq_llm_batch", 0.928),
]
TOP_TAGS = [
    ("1girl", "CHARACTER_RELATED", "CHARACTER_COUNT", 96_138_304),
    ("highres", "TECHNICAL", None, 84_099_120),
    ("solo", "CHARACTER_RELATED", "CHARACTER_COUNT", 80_015_264),
    ("long_hair", "CHARACTER_RELATED", "HAIR", 69_611_888),
    ("breasts", "CHARACTER_RELATED", "BODY_PARTS", 55_027_424),
    ("looking_at_viewer", "COMPOSITION", None, 48_000_000),
    ("smile", "CHARACTER_RELATED", "EXPRESSION", 41_000_000),
    ("blush", "CHARACTER_RELATED", "EXPRESSION", 38_000_000),
]
SYLLABLES = [
    "ka", "ri", "mo", "na", "shi", "to", "yu", "ki", "ha", "ru", "sa", "ko", "mi", "ta", "ne",
    "ai", "ro", "zu", "ya", "fu", "chi", "ra", "no", "se", "me", "hi", "ku", "so", "wa", "e",
]
WORDS = [
    "hair", "eyes", "dress", "skirt", "school", "uniform", "sword", "flower", "sky", "night",
    "sea", "cat", "ears", "ribbon", "hat", "gloves", "boots", "jacket", "shirt", "smile",
    "red", "blue", "green", "black", "white", "silver", "long", "short", "twin", "braid",
]
# Pareto tail: P(post_count > x) = (400 / x) ** ALPHA gives ~0.47 % of tags above 1 M
ALPHA = 0.685
MIN_POSTS, MAX_POSTS = 400, 96_138_304


def _name(rng: random.Random, i: int, category: str | None) -> str:
    if category in ("ARTIST", "CHARACTER", "COPYRIGHT"):
        base = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if category == "CHARACTER":
            base += "_(" + "".join(rng.choice(SYLLABLES) for _ in range(3)) + ")"
    else:
        base = "_".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
    return f"{base}_{i:x}"  # the suffix keeps names unique


def generate_rows(rows: int, seed: int = 1) -> Iterator[tuple[object, ...]]:
    rng = random.Random(seed)
    names = [c for c, _ in CATEGORIES]
    weights = [w for _, w in CATEGORIES]
    for i, (name, main, sub, posts) in enumerate(TOP_TAGS):
        if i < rows:
            yield (name, main, sub, "needs_reclassification", None, posts)
    for i in range(len(TOP_TAGS), rows):
        main = rng.choices(names, weights)[0]
        subs = SUB_CATEGORIES.get(main or "")
        sub = rng.choice(subs) if subs and rng.random() < 0.5 else None
        if rng.random() < 0.072:
            source, mean = rng.choice(SOURCES)
            confidence: float | None = round(min(1.0, max(0.6, rng.gauss(mean, 0.07))), 3)
        else:
            source, confidence = "needs_reclassification", None
        posts = int(MIN_POSTS * (1.0 - rng.random()) ** (-1.0 / ALPHA))
        yield (_name(rng, i, main), main, sub, source, confidence, min(posts, MAX_POSTS - 1))


# Set by tests/conftest.py for a test session: each (rows, seed, indexes, page_size) is
# generated once into this folder and copied from there (generating 3,000 rows costs
# ~40 ms of CPU, a copy ~1 ms; the suite asks for the same few builds hundreds of times).
cache_dir: Path | None = None


def write_sample(path: Path, rows: int = 20_000, seed: int = 1, *, indexes: bool = True,
                 page_size: int | None = None) -> Path:
    """Write a complete tags.db at path (temp file + rename, so it appears whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        built = cache_dir / f"rows{rows}-seed{seed}-idx{int(indexes)}-page{page_size or 0}.db"
        if not built.exists():
            _generate(built, rows, seed, indexes, page_size)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.copyfile(built, tmp)
        os.replace(tmp, path)
        return path
    return _generate(path, rows, seed, indexes, page_size)


def _generate(path: Path, rows: int, seed: int, indexes: bool, page_size: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        if page_size:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(TABLE_SQL)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO tags_final (name, main_category, sub_category, classification_source,"
            " classification_confidence, post_count) VALUES (?,?,?,?,?,?)",
            generate_rows(rows, seed))
        conn.execute("COMMIT")
        if indexes:
            for sql in INDEX_SQL:
                conn.execute(sql)
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-indexes", action="store_true")
    args = parser.parse_args(argv)
    write_sample(args.path, args.rows, args.seed, indexes=not args.no_indexes)
    print(f"wrote {args.path} ({args.rows} rows, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
