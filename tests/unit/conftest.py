"""What every unit test sees: no built lab tools.

`./run tests` runs the unit tests while the lab's tools build, and on a fresh machine none are built
yet: a unit test that leans on a built tool (the lab's Pulumi CLI, say) passes only where the tools
were cached. Pointing the tools' directory at an empty one makes every run see the fresh machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_lab_tools(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    empty = tmp_path_factory.getbasetemp() / "no-lab-tools"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("CANARY_TOOLS", str(empty))
    return empty
