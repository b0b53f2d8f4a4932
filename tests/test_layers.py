"""The map of the package holds: each third-party client is imported by its one adapter, the core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import canary

PACKAGE = Path(canary.__file__).parent

#: library -> the modules allowed to import it
ADAPTERS = {
    "pulumi.automation": {"stack.py", "langhost.py"},
    "pulumi_kubernetes": {"program.py"},
    "prometheus_api_client": {"prometheus.py"},
    "kubernetes": {"kube.py"},
}
PURE_CORE = ("units.py", "templates.py", "spec.py", "schedule.py", "routing.py", "metrics.py", "analysis.py", "flagger.py")
IO_MODULES = {"subprocess", "socket", "requests", "urllib3", "pulumi", "kubernetes", "prometheus_api_client", "http", "os"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_each_client_library_has_one_adapter(library: str) -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name == library or name.startswith(library + ".") for name in _imports(path))
    }
    assert importers <= ADAPTERS[library], importers


@pytest.mark.parametrize("module", PURE_CORE)
def test_the_core_does_no_io(module: str) -> None:
    imported = {name.split(".")[0] for name in _imports(PACKAGE / module)}
    assert not imported & IO_MODULES, imported & IO_MODULES


def test_public_surface() -> None:
    assert sorted(canary.__all__) == sorted([
        "BadQuery", "CanaryError", "CheckResult", "ClusterUnreachable", "InvalidSpec", "LabError", "MetricError",
        "MultipleValues", "NoValues", "Outcome", "Problem", "ProviderUnreachable", "ReleaseSpec", "StackBusy",
        "StackError", "StackNotFound", "TickResult", "Verdict", "from_config", "load_stack_file", "parse_spec",
        "run_tick", "weights",
    ])
    for name in canary.__all__:
        assert hasattr(canary, name), name
