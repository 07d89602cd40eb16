"""fleet rollback picks its target from the signed pointer history: the previous
release (skipping ones already rolled back from), or --to SEQ; always a higher seq."""

from __future__ import annotations

from tests.fleet.fleetenv import Fleet


def test_rollback_targets(fleet: Fleet) -> None:
    pushed = [fleet.push(fleet.make_db(f"r{i}.db", rows=2000 + i, seed=i)) for i in (1, 2, 3)]
    back = fleet.fleet_json("rollback", "--channel", "staging")
    assert (back["seq"], back["sha256"], back["to_seq"]) == (4, pushed[1]["sha256"], 2)
    # again: 3 was rolled back from, 2 is being left: back to 1, not forward to 3
    again = fleet.fleet_json("rollback", "--channel", "staging")
    assert (again["seq"], again["sha256"]) == (5, pushed[0]["sha256"])
    nothing = fleet.build.cli("fleet", "rollback", "--channel", "staging", expect=4)
    assert "no earlier release" in nothing.stderr
    to = fleet.fleet_json("rollback", "--channel", "staging", "--to", "3")
    assert (to["seq"], to["sha256"]) == (6, pushed[2]["sha256"])
    missing = fleet.build.cli("fleet", "rollback", "--channel", "staging", "--to", "99",
                              expect=4)
    assert "no seq 99" in missing.stderr
    chain = fleet.fleet_json("releases", "--channel", "staging")
    assert [r["seq"] for r in chain] == [6, 5, 4, 3, 2, 1]
    assert [r["reverts"] for r in chain[:3]] == [pushed[0]["sha256"], pushed[1]["sha256"],
                                                 pushed[2]["sha256"]]
