"""The release machine's strategies beyond weighted steps (unit tests on the in-memory fakes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from canary.core.records import Phase, TrackPin
from canary.core.routing import RouteShape
from canary.errors import InvalidSpec
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


def _pin(image: str, port: int, name: str | None) -> TrackPin:
    ports = [{"containerPort": port, **({"name": name} if name else {})}]
    return TrackPin(template={"spec": {"containers": [{"name": "web", "image": image, "ports": ports}]}}, hash=image, image=image, port=port)


@pytest.mark.parametrize(("stable", "desired", "refused"), [
    (("http", 8080), ("web", 9090), True),  # renamed and moved: neither the name nor the number reaches a new pod
    ((None, 8080), (None, 9090), True),  # unnamed: stable's Services target 8080 on pods that serve 9090
    ((None, 8080), ("http", 9090), True),
    (("http", 8080), ("http", 9090), False),  # the name follows each pod's own number
    (("http", 8080), ("web", 8080), False),  # renamed, not moved: the number is targeted meanwhile
])
def test_a_release_that_moves_the_port_out_of_stable_s_services_reach_is_refused(stable: tuple[str | None, int], desired: tuple[str | None, int],
                                                                                 refused: bool) -> None:
    """While stable takes the new version, its Services (and the apex Service) still target the old port: by name, each
    pod's own number; unnamed, the old number. A release that renamed and moved the port (or moved an unnamed one) left
    every new pod out of them, or in them on a port it does not serve, as stable rolled with users still routed there."""
    world = make(Metrics(0.0))
    world.release.facts = replace(world.release.facts, stable=_pin("web:1", stable[1], stable[0]))
    if not refused:
        assert world.release.start(_pin("web:2", desired[1], desired[0]), "config:\n  canary:app: {}\n").phase is Phase.SUCCEEDED
        return
    with pytest.raises(InvalidSpec, match=r"app.port: .*would reach no new pod on it. Name the port the same in both templates"):
        world.release.start(_pin("web:2", desired[1], desired[0]), "config:\n  canary:app: {}\n")
    assert world.stack.ups == [] and world.store.state is None  # nothing applied, no release begun
