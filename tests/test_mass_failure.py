"""Half of a 1,000-node ring crashing at once must heal into one ring.

With this seed the plain protocol used to settle into two rings (398 and 102
nodes), each consistent from inside, which stabilize never merges; strong
stabilization (ChordNode.check_not_skipped) merges them.
"""

from __future__ import annotations

from tools.sim import SimOptions, run


def test_half_of_a_thousand_nodes_crashing_heals_into_one_ring() -> None:
    summary = run(
        SimOptions(scenario="fail", nodes=1000, fail_fraction=0.5, blocks=0, lookup_rate=10.0, duration=600.0, seed=1)
    )
    assert summary["converged_after"] is not None
    assert summary["converged_after"] < 600
