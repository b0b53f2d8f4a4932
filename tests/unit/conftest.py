"""What every unit test sees: no built lab tools, and no A/B match values another test's release config left.

`./run tests` runs the unit tests while the lab's tools build, and on a fresh machine none are built
yet: a unit test that leans on a built tool (the lab's Pulumi CLI, say) passes only where the tools
were cached. Pointing the tools' directory at an empty one makes every run see the fresh machine.
Tests marked ``lab`` here run with the lab tests, after the build, and see the tools.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_lab_tools(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    if request.node.get_closest_marker("lab") is not None:
        return None  # a test of a real lab part kept beside the unit tests (a real Prometheus): it runs after the build
    empty = tmp_path_factory.getbasetemp() / "no-lab-tools"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("CANARY_TOOLS", str(empty))
    return empty


@pytest.fixture(autouse=True)
def _no_match_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's A/B match values (``stackfile.route_matches``) start empty in each test: a release config written
    by another test (in this worker, in any order) must not give a program its values."""
    from canary.adapters import stackfile

    monkeypatch.setattr(stackfile, "_MATCH_VALUES", {})
