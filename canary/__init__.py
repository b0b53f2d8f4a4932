"""canary: progressive delivery for Pulumi stacks, gated by Prometheus checks.

Layers, each importing only downward (``[tool.importlinter]`` in pyproject.toml holds the contract):

- ``canary.core`` — pure, no I/O: the spec, workload templates, routing, the
  schedule, the analysis and its judges, typed records, Flagger import;
- ``canary.adapters`` — one outside system each: the Pulumi stack and program
  (the component), Kubernetes, Prometheus, HTTP, local commands, YAML files;
- ``canary.state`` — the release store in the cluster, its lease, the local cache;
- ``canary.release`` — the state machine, talking to the world through ports;
- front: ``canary.api`` (scripts), ``canary.cli``, ``canary.component`` (Pulumi programs);
- ``canary.lab`` — the local environment for the demo and the tests.

The pure surface for scripts is listed in ``__all__``; ``canary.api`` runs
releases, ``canary.component`` declares apps in a Pulumi program.
"""

from canary.core.analysis import TickResult, run_tick
from canary.core.records import Check, Effect, Outcome, Phase, Verdict
from canary.core.schedule import weights
from canary.core.spec import ReleaseSpec, StackSpec, parse_spec, parse_stack
from canary.errors import (
    BadQuery,
    CanaryError,
    ClusterUnreachable,
    InvalidSpec,
    LabError,
    MetricError,
    MultipleValues,
    NoValues,
    Problem,
    ProviderUnreachable,
    StackBusy,
    StackError,
    StackNotFound,
)

__all__ = [
    "BadQuery",
    "CanaryError",
    "Check",
    "ClusterUnreachable",
    "Effect",
    "InvalidSpec",
    "LabError",
    "MetricError",
    "MultipleValues",
    "NoValues",
    "Outcome",
    "Phase",
    "Problem",
    "ProviderUnreachable",
    "ReleaseSpec",
    "StackBusy",
    "StackError",
    "StackNotFound",
    "StackSpec",
    "TickResult",
    "Verdict",
    "parse_spec",
    "parse_stack",
    "run_tick",
    "weights",
]
