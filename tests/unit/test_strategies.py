"""The release machine's strategies beyond weighted steps (unit tests on the in-memory fakes)."""

from __future__ import annotations

from typing import Any

from canary.core.records import Phase
from canary.core.routing import RouteShape
from tests.unit.fakes import Metrics, make


def test_blue_green_scales_green_to_stable_s_size_before_the_switch() -> None:
    """`canaryReplicas` sizes green for its testers (or mirrored requests); the switch then sent every user to that one
    pod, though the README says green runs at full size when it takes the traffic."""
    def small_green(v: dict[str, Any]) -> None:
        for key in ("stepWeight", "maxWeight", "stepWeights"):
            v["analysis"].pop(key, None)
        v["analysis"]["iterations"] = 2
        v["app"].update(replicas=4, canaryReplicas=1)

    world = make(Metrics(0.0), small_green)
    assert world.start().phase is Phase.SUCCEEDED
    log = world.cluster.log
    switch = next(i for i, (kind, what) in enumerate(log) if kind == "route" and isinstance(what, RouteShape) and what.weight == 100)
    sizes = [what for kind, what in log[:switch] if kind == "canary"]
    assert sizes and sizes[0] == 1 and sizes[-1] == 4, log
