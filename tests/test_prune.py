"""Which releases the archive keeps: the newest keep_releases good published ones,
plus whatever is in the two slots; rejected candidates never take a place."""

from __future__ import annotations

from .conftest import Env


def archived(env: Env) -> list[int]:
    """Releases kept on disk: the archive (what `status` lists) plus the two slots
    (a release is in exactly one of them: it moves by rename)."""
    ids = env.status()["archived"]
    files = sorted(int(p.stem.split("-")[1]) for p in (env.root / "archive").glob("release-*.db"))
    assert ids == files
    slots = [int(p.stem.split("-")[1]) for p in (env.root / "slots").glob("*/release-*.db")]
    assert not set(slots) & set(files)
    return sorted(files + slots)


def test_pruning_keeps_exactly_the_newest_good_releases_and_both_slots(env: Env) -> None:
    env.write_config(keep_releases="3")
    env.cli("init")
    for seed in (1, 2, 3, 4):
        env.cli("publish", str(env.make_db(f"b{seed}.db", seed=seed)))
    assert archived(env) == [2, 3, 4]  # release 1 is the fourth newest: pruned

    empty = env.make_db("empty.db", sql="DELETE FROM tags_final;")
    assert env.cli_json("publish", str(empty), expect=1)["outcome"] == "rejected"  # release 5
    assert archived(env) == [2, 3, 4]

    env.cli("publish", str(env.make_db("b6.db", seed=6)))  # release 6, into 3's slot
    st = env.status()
    assert (st["live"]["release_id"], st["idle"]["release_id"]) == (6, 4)
    assert archived(env) == [3, 4, 6]

    env.cli("rollback", "--to", "4")  # nothing published: the archive stays
    assert archived(env) == [3, 4, 6]
    env.cli("publish", str(env.make_db("b7.db", seed=7)))  # release 7, into 6's slot
    st = env.status()
    assert (st["live"]["release_id"], st["idle"]["release_id"]) == (7, 4)
    assert archived(env) == [4, 6, 7]
    # 6 left its slot but is among the newest three; 3 is pruned and cannot come back
    err = env.cli("rollback", "--to", "3", expect=4).stderr
    assert "no longer archived" in err
