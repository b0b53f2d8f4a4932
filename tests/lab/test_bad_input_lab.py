"""Bad input on the lab: refused with exit 2, naming the field (or argument) and the rule, and nothing changed.

Issue 5's bad-input part. Every case applies one bad input — a mutated stack
file, bad CLI arguments or a bad Flagger manifest — and runs the real CLI as a
user would. It must exit 2 with the field and the rule on stderr, no traceback
and nothing on stdout. Then the lab is compared with a fingerprint taken
before the case: the stack's whole Pulumi checkpoint, its stack file, Pulumi's
locks, the release store (state, journal, lease: ConfigMaps and Lease in the
namespace), and every object of the stack's namespace in the cluster (uid,
resourceVersion, generation) with the route's weights. A refusal that applied anything, even an ``up`` that changed nothing,
shows there: an ``up`` rewrites the checkpoint.

One stack is deployed for the whole module: a deploy takes about 15 s, and a
refused input must leave it exactly as it was anyway, which the fingerprint
checks after every case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from canary import api
from canary.adapters import stackfile
from canary.adapters.kube import Kube
from canary.adapters.stack import Stack
from canary.lab.layout import Layout
from canary.state.cache import state_root
from tests.conftest import FIXTURES
from tests.lab.conftest import make_project
from tests.lab.helpers import LabStack
from tests.lab.holds import LabHolds

# one stack for the whole module: every case runs on the worker that deployed it
pytestmark = pytest.mark.xdist_group("bad-input")


class yaml:  # noqa: N801 - the few YAML calls of the cases, through the project's own adapter
    safe_load = staticmethod(stackfile.load)

    @staticmethod
    def safe_dump(data: Any, sort_keys: bool = False) -> str:
        return stackfile.dump(data)

NAME = "t-bad-input"
MISSING = "t-no-such-stack"
TOKEN = "tok-" + "b4d1" * 6
RELEASE = ["release", NAME, "--image", "demo:v2", "--lab"]
#: The namespace's objects a release creates or changes, its store's included.
KINDS = (
    ("apps/v1", "Deployment"), ("apps/v1", "ReplicaSet"), ("v1", "Pod"), ("v1", "Service"), ("v1", "ConfigMap"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"), ("discovery.k8s.io/v1", "EndpointSlice"), ("coordination.k8s.io/v1", "Lease"),
)


@pytest.fixture(scope="module")
def bad_stack(lab_layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    """The lab stack every case runs against, deployed once at its stable state (demo:v1, 100/0).

    A module's fixture is set up before the first test's hold on the lab is taken and torn down after
    the last one's is let go: its deploy and its destroy take a hold of their own, so that a test that
    stops a component of the lab never runs under them."""
    lab = lab_layout
    holds = LabHolds(lab.dir)
    project = make_project(lab, tmp_path_factory.mktemp("bad-input"), NAME)
    env = {**os.environ, **lab.pulumi_env(), "CANARY_LAB_DIR": str(lab.dir)}
    with holds.held(exclusive=False):
        assert api.up(NAME, project_dir=project, env=env).exit_code == 0
    yield LabStack(lab, project, NAME, NAME, env, Kube(lab.kubeconfig))
    with holds.held(exclusive=False):
        Stack(project, NAME, env).destroy()


# --- what must not change ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """Everything a release could have touched. Compared whole: nothing is ignored."""

    checkpoint: dict[str, Any]
    stack_files: dict[str, bytes]
    pulumi_locks: tuple[str, ...]
    local_state: tuple[str, ...]
    route: tuple[Any, ...] | None
    objects: dict[str, tuple[Any, ...]]


def _stack_file(ls: LabStack) -> Path:
    return ls.project / "stacks" / f"Pulumi.{NAME}.yaml"


def fingerprint(ls: LabStack, spec: Any) -> Fingerprint:
    lock_dir = ls.layout.backend_dir / ".pulumi" / "locks" / "organization" / "canary" / NAME
    route = ls.reader.route(spec)
    objects: dict[str, tuple[Any, ...]] = {}
    for api_version, kind in KINDS:
        for obj in ls.kube.list(api_version, kind, NAME):
            meta = obj["metadata"]
            objects[f"{kind}/{meta['name']}"] = (meta["uid"], meta["resourceVersion"], meta.get("generation"))
    namespace = ls.kube.get("v1", "Namespace", NAME) or {}
    objects["Namespace"] = (namespace.get("metadata", {}).get("uid"), namespace.get("metadata", {}).get("resourceVersion"))
    local = state_root(ls.project)
    return Fingerprint(
        checkpoint=Stack(ls.project, NAME, ls.env).export(),
        stack_files={p.name: p.read_bytes() for p in sorted((ls.project / "stacks").iterdir()) if not p.name.startswith(".")},
        pulumi_locks=tuple(sorted(p.name for p in lock_dir.glob("*"))) if lock_dir.is_dir() else (),
        local_state=tuple(sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and "_stack" not in p.parts)) if local.is_dir() else (),
        route=None if route is None else (route.weights, route.accepted),
        objects=objects,
    )


# --- the cases ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What a case's input is written with: the lab stack and a directory of its own for manifests."""

    ls: LabStack
    tmp: Path

    @property
    def stack_file(self) -> Path:
        return _stack_file(self.ls)


Check = Callable[[Ctx, "subprocess.CompletedProcess[str]"], None]


@dataclass(frozen=True)
class Case:
    id: str
    #: writes the bad input and returns the CLI's arguments
    apply: Callable[[Ctx], list[str]]
    #: what stderr must say: the offending field or argument, and the rule
    expect: tuple[str, ...]
    #: anything else the case must show
    check: Check | None = None


def stack_config(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], list[str]]:
    """A case that releases demo:v2 with the stack file's ``config:`` changed by ``mutate``."""

    def apply(ctx: Ctx) -> list[str]:
        document = yaml.safe_load(ctx.stack_file.read_text())
        mutate(document["config"])
        ctx.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        return RELEASE

    return apply


def analysis(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config["canary:analysis"].update(values)


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.__setitem__(key, value)


def in_key(key: str, path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or, for None, delete) ``path`` (dots; digits index lists) inside ``config[key]``."""

    def mutate(config: dict[str, Any]) -> None:
        node = config[key]
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def error_rate_query(query: str) -> Callable[[dict[str, Any]], None]:
    return in_key("canary:metricTemplates", "error-rate.query", query)


def malformed_stack_file(ctx: Ctx) -> list[str]:
    ctx.stack_file.write_text("config:\n  canary:app: [unclosed\n")
    return RELEASE


def secret_token_without_address(ctx: Ctx) -> list[str]:
    """A real Pulumi secret (decrypted by the Automation API) next to a missing field: never shown."""
    subprocess.run(["pulumi", "config", "set", "--secret", "--path", "canary:prometheus.token", TOKEN, "--stack", NAME],
                   cwd=ctx.ls.project, env=ctx.ls.env, check=True, capture_output=True, timeout=60)
    document = yaml.safe_load(ctx.stack_file.read_text())
    assert "secure" in document["config"]["canary:prometheus"]["token"]
    del document["config"]["canary:prometheus"]["address"]
    ctx.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return RELEASE


def secret_token_beside_a_plain_header(ctx: Ctx) -> list[str]:
    """The Automation API reports canary:prometheus as secret as a whole: only the file shows the header is not."""
    subprocess.run(["pulumi", "config", "set", "--secret", "--path", "canary:prometheus.token", TOKEN, "--stack", NAME],
                   cwd=ctx.ls.project, env=ctx.ls.env, check=True, capture_output=True, timeout=60)
    document = yaml.safe_load(ctx.stack_file.read_text())
    document["config"]["canary:prometheus"]["headers"] = {"X-Api-Key": "tok-plain-text"}
    ctx.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return RELEASE


def args(*arguments: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: list(arguments)


def no_secret(ctx: Ctx, done: subprocess.CompletedProcess[str]) -> None:
    assert TOKEN not in done.stdout + done.stderr and "tok-plain-text" not in done.stdout + done.stderr


def nothing_made_for_the_missing_stack(ctx: Ctx, done: subprocess.CompletedProcess[str]) -> None:
    assert not list((ctx.ls.layout.backend_dir / ".pulumi" / "stacks" / "canary").glob(f"{MISSING}*")), "a stack was created"
    assert not (state_root(ctx.ls.project) / MISSING).exists(), "a local cache was created"


def prometheus_reason_whole(ctx: Ctx, done: subprocess.CompletedProcess[str]) -> None:
    assert "got instant vector" in done.stderr  # Prometheus's own reason, whole


def flagger(*changes: Callable[[list[dict[str, Any]]], None], text: str | None = None, template: bool = True) -> Callable[[Ctx], list[str]]:
    """A case that imports the reference Canary (and MetricTemplate) changed by ``changes``, or ``text`` as the manifest."""

    def apply(ctx: Ctx) -> list[str]:
        canary_path = ctx.tmp / "canary.yaml"
        if text is not None:
            canary_path.write_text(text)
            return ["import-flagger", str(canary_path)]
        documents = [yaml.safe_load((FIXTURES / "flagger-canary.yaml").read_text()), yaml.safe_load((FIXTURES / "flagger-metric-template.yaml").read_text())]
        for change in changes:
            change(documents)
        canary_path.write_text(yaml.safe_dump(documents[0]))
        paths = [str(canary_path)]
        if template:
            template_path = ctx.tmp / "template.yaml"
            template_path.write_text(yaml.safe_dump(documents[1]))
            paths.append(str(template_path))
        return ["import-flagger", *paths, "--stable-image", "demo:v1"]

    return apply


def canary_manifest(path: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    return lambda documents: in_key("doc", path, value)({"doc": documents[0]})


def template_manifest(path: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    return lambda documents: in_key("doc", path, value)({"doc": documents[1]})


REJECTED_QUERY = 'sum(rate(http_requests_total{namespace="{{ namespace }}",kubernetes_pod_name=~"{{ target }}-.*"}))'
FIELD_RULE = "is not a known field"
IMAGE_RULE = "must be an image reference"
TIMEOUT_RULE = ("'--route-timeout'", "is not in the range 1<=x<=3600")

CASES = [
    # stack config: read through the Automation API, validated before the release takes the stack
    Case("malformed-yaml", malformed_stack_file, (f"Pulumi.{NAME}.yaml", "must be valid YAML", "line 3")),
    Case("unknown-top-level-key", stack_config(set_key("canary:bogus", 1)), ("bogus", FIELD_RULE)),
    Case("unknown-analysis-field", stack_config(analysis(stepWieght=10)), ("analysis.stepWieght", FIELD_RULE)),
    Case("threshold-three", stack_config(analysis(threshold="three")), ("analysis.threshold", "valid integer", "'three'")),
    Case("interval-5-parsecs", stack_config(analysis(interval="5 parsecs")), ("analysis.interval", "must be a duration")),
    Case("step-weight-0", stack_config(analysis(stepWeight=0)), ("analysis.stepWeight", "greater than or equal to 1")),
    Case("max-weight-120", stack_config(analysis(maxWeight=120)), ("analysis.maxWeight", "less than or equal to 100")),
    Case("step-weight-over-max", stack_config(analysis(stepWeight=60, maxWeight=50)), ("analysis:", "stepWeight (60) must not exceed maxWeight (50)")),
    Case("image-unparsable", stack_config(in_key("canary:app", "image", "Demo:v1")), ("app.image", IMAGE_RULE)),
    Case("template-field-mistyped", stack_config(in_key("canary:app", "template", {"spec": {"containers": [{"name": "web", "imagePullPolicyy": "Always"}]}})),
         ("app.template.spec.containers[0].imagePullPolicyy", "is not a field of Container (did you mean imagePullPolicy?)")),
    Case("unknown-builtin-metric", stack_config(in_key("canary:analysis", "metrics.1.name", "request-latency")),
         ("analysis.metrics[1].name", "names no built-in metric")),
    Case("threshold-range-min-over-max", stack_config(in_key("canary:analysis", "metrics.0.thresholdRange", {"min": 5, "max": 1})),
         ("analysis.metrics[0].thresholdRange", "min (5) must not be greater than max (1)")),
    Case("plain-text-token", stack_config(in_key("canary:prometheus", "token", "tok-plain-text")),
         ("prometheus.token", "must be a Pulumi secret"), no_secret),
    Case("secret-token-missing-address", secret_token_without_address, ("prometheus.address", "is required", "(got nothing)"), no_secret),
    Case("plain-header-beside-a-secret-token", secret_token_beside_a_plain_header, ("prometheus.headers", "must be a Pulumi secret"), no_secret),
    Case("webhook-unknown-type", stack_config(in_key("canary:analysis", "webhooks.0.type", "pre-flight")),
         ("analysis.webhooks[0].type", "Input should be 'confirm-rollout'")),
    Case("webhook-url-and-cmd", stack_config(in_key("canary:analysis", "webhooks.0.url", "http://127.0.0.1:9/")),
         ("analysis.webhooks[0]", "must set exactly one of url")),
    Case("webhook-neither-url-nor-cmd", stack_config(in_key("canary:analysis", "webhooks.0.cmd", None)),
         ("analysis.webhooks[0]", "must set exactly one of url")),
    Case("bad-hostname", stack_config(in_key("canary:gateway", "hostnames", ["Bad_Host.lab.test"])), ("gateway.hostnames[0]", "DNS-1123 hostname")),
    Case("negative-replicas", stack_config(in_key("canary:app", "replicas", -1)), ("app.replicas", "greater than or equal to 1")),
    Case("missing-app", stack_config(lambda config: config.pop("canary:app")), ("app", "is required")),
    Case("canary-weight-from-an-earlier-version", stack_config(set_key("canary:canaryWeight", 30)), ("canaryWeight", "is no longer stack config")),
    Case("canary-image-from-an-earlier-version", stack_config(set_key("canary:canaryImage", "demo:v2")), ("canaryImage", "is no longer stack config")),
    Case("release-key-in-the-stack-file", stack_config(set_key("canary:release", {"web": {}})), ("canary:release", "written by canary into its release config files only")),
    Case("failure-limit-zero", stack_config(analysis(failureLimit=0)), ("analysis.failureLimit", "greater than or equal to 1")),
    Case("match-without-iterations", stack_config(analysis(match=[{"headers": {"x-canary": {"exact": "1"}}}])), ("analysis", "match (A/B testing) needs iterations")),
    Case("promql-unbalanced", stack_config(error_rate_query("sum(rate(http_requests_total[1m]")),
         ("metricTemplates.error-rate.query", "is not valid PromQL: unclosed '('")),
    # balanced and well-placeholdered, so only Prometheus can refuse it: the preflight, before any up
    Case("promql-rejected-by-prometheus", stack_config(error_rate_query(REJECTED_QUERY)),
         ("metricTemplates.error-rate.query", "Prometheus rejected it", "analysis.metrics[0] (error-rate)"), prometheus_reason_whole),
    # CLI arguments
    Case("image-with-space", args("release", NAME, "--image", "demo v2", "--lab"), ("--image", IMAGE_RULE, "(got demo v2)")),
    Case("image-uppercase-repo", args("release", NAME, "--image", "Demo:v2", "--lab"), ("--image", IMAGE_RULE, "Demo:v2")),
    Case("image-empty-tag", args("release", NAME, "--image", "demo:", "--lab"), ("--image", IMAGE_RULE, "demo:")),
    Case("image-untagged", args("release", NAME, "--image", "demo", "--lab"), ("--image", "must name a tag or a digest")),
    Case("image-is-the-stable-image", args("release", NAME, "--image", "demo:v1", "--lab"), ("--image", "is already the stable image")),
    Case("release-stack-not-found", args("release", MISSING, "--image", "demo:v2", "--lab"), (f"stack {MISSING}", "no such stack"),
         nothing_made_for_the_missing_stack),
    Case("resume-stack-not-found", args("resume", MISSING, "--lab"), (f"stack {MISSING}", "no such stack"), nothing_made_for_the_missing_stack),
    Case("route-timeout-0", args(*RELEASE, "--route-timeout", "0"), TIMEOUT_RULE),
    Case("route-timeout-negative", args(*RELEASE, "--route-timeout", "-5"), TIMEOUT_RULE),
    Case("route-timeout-abc", args(*RELEASE, "--route-timeout", "abc"), ("'--route-timeout'", "'abc' is not a valid float")),
    Case("unknown-option", args(*RELEASE, "--canary-weight", "10"), ("No such option '--canary-weight'",)),
    Case("missing-image", args("release", NAME, "--lab"), ("Missing option '--image'",)),
    Case("resume-without-release", args("resume", NAME, "--lab"), ("--app:", "has no release to resume")),
    Case("unknown-app", args("status", NAME, "--app", "nosuch", "--lab"), ("--app", "names no app of stack")),
    Case("promote-force-without-reason", args("promote", NAME, "--force", "--lab"), ("--reason", "is required with --force")),
    # Flagger manifests: nothing is written, the output would be a stack file
    Case("flagger-malformed-yaml", flagger(text="apiVersion: flagger.app/v1beta1\nkind: Canary\nspec: [oops\n"), ("canary.yaml", "must be valid YAML")),
    Case("flagger-not-a-canary", flagger(canary_manifest("kind", "Deployment")), ("kind", "exactly one Canary manifest is required")),
    Case("flagger-unknown-analysis-field", flagger(canary_manifest("spec.analysis.treshold", 3)),
         ("spec.analysis.treshold", "is not a field of Flagger's Canary spec.analysis")),
    Case("flagger-interval-wrong-type", flagger(canary_manifest("spec.analysis.interval", "5 parsecs")), ("spec.analysis.interval", "must be a duration")),
    Case("flagger-analysis-wrong-type", flagger(canary_manifest("spec.analysis", "fast")), ("spec.analysis", "must be a mapping, not a string")),
    # a stepWeight above maxWeight imports as the weights Flagger runs; a maxWeight above 100 it never reaches is refused
    Case("flagger-max-weight-over-100", flagger(canary_manifest("spec.analysis.maxWeight", 150)),
         ("spec.analysis.maxWeight", "less than or equal to 100")),
    Case("flagger-missing-target-ref", flagger(canary_manifest("spec.targetRef", None)), ("spec.targetRef", "is required")),
    Case("flagger-template-not-given", flagger(template=False),
         ("spec.analysis.metrics[0].templateRef.name", "must name a MetricTemplate given with the Canary")),
    Case("flagger-unsupported-provider", flagger(template_manifest("spec.provider.type", "datadog")),
         ("MetricTemplate error-rate: spec.provider.type", "must be prometheus")),
]


def run_cli(ls: LabStack, arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """The real CLI in the project, as canary_cli in test_release_lab runs it (import-flagger takes no --project-dir)."""
    extra = [] if arguments[0] == "import-flagger" else ["--project-dir", str(ls.project)]
    return subprocess.run([sys.executable, "-m", "canary", *arguments, *extra], capture_output=True, text=True, timeout=120, env=ls.env, cwd=ls.project, check=False)


@pytest.fixture(scope="module")
def spec(bad_stack: LabStack) -> Any:
    """The stack's valid spec, read before any case: where the route and the Deployments are."""
    return bad_stack.spec()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_naming_the_field_and_changes_nothing(case: Case, lab: Layout, bad_stack: LabStack, spec: Any, tmp_path: Path) -> None:
    before = fingerprint(bad_stack, spec)
    assert before.route == ((100, 0), True) and bad_stack.state() is None, before  # the stable state every case starts from
    stack_file = _stack_file(bad_stack)
    try:
        arguments = case.apply(Ctx(bad_stack, tmp_path))
        written = stack_file.read_bytes()
        done = run_cli(bad_stack, arguments)
        assert stack_file.read_bytes() == written, "the CLI wrote to the stack file"
    finally:
        stack_file.write_bytes(before.stack_files[stack_file.name])
    output = f"exit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
    assert done.returncode == 2, output
    assert "Traceback" not in done.stdout + done.stderr, output
    assert done.stdout == "", output  # no event, no stack config printed
    for text in case.expect:
        assert text in done.stderr, f"{text!r} is not on stderr\n{output}"
    if case.check is not None:
        case.check(Ctx(bad_stack, tmp_path), done)
    after = fingerprint(bad_stack, spec)
    assert after == before
