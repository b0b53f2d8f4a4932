"""canary: progressive delivery for Pulumi stacks, gated by Prometheus checks.

Layers, each importing only downward:

- core, pure (no I/O): ``units``, ``templates``, ``spec``, ``schedule``, ``routing``,
  ``metrics``, ``analysis``, ``flagger``, ``stackconfig`` (reads a file only when asked)
- adapters, one per third-party client: ``prometheus`` (prometheus-api-client),
  ``program`` (pulumi, pulumi-kubernetes), ``stack`` (pulumi.automation),
  ``kube`` (kubernetes), ``webhooks`` (HTTP and local commands)
- state: ``journal`` (the durable record, locks and requests), ``processes`` (is a lock's holder still there)
- orchestration: ``release`` (the state machine, through ports)
- front: ``api`` (for scripts), ``cli``
- the local environment: ``lab`` (control plane, gateway, Prometheus), ``demoapp``,
  ``langhost`` (the Python language host for plain ``pulumi up``)

The public surface for scripts is listed in ``__all__``.
"""

from canary.analysis import CheckResult, Outcome, TickResult, Verdict, run_tick
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
from canary.schedule import weights
from canary.spec import ReleaseSpec, parse_spec
from canary.stackconfig import from_config, load_stack_file

__all__ = [
    "BadQuery",
    "CanaryError",
    "CheckResult",
    "ClusterUnreachable",
    "InvalidSpec",
    "LabError",
    "MetricError",
    "MultipleValues",
    "NoValues",
    "Outcome",
    "Problem",
    "ProviderUnreachable",
    "ReleaseSpec",
    "StackBusy",
    "StackError",
    "StackNotFound",
    "TickResult",
    "Verdict",
    "from_config",
    "load_stack_file",
    "parse_spec",
    "run_tick",
    "weights",
]
