"""Analysis against a real Prometheus scraping real demo processes (stable and canary pods).

Each scenario lives in its own namespace: a healthy stable pod next to a canary
pod that is healthy, returns 20 % of 500s, answers slowly, or gets no traffic.
All traffic goes to loopback and every load loop is bounded in requests and time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from canary.adapters import stackfile
from canary.adapters.prometheus import PrometheusProvider
from canary.core import analysis
from canary.core.records import Outcome, Verdict
from canary.core.spec import NoDataPolicy, ThresholdRange, parse_spec, parse_stack
from canary.errors import BadQuery, MultipleValues, NoValues
from canary.lab import procs
from canary.lab import prometheus as lab_prometheus
from tests.conftest import FIXTURES, base_values

pytestmark = [pytest.mark.prometheus, pytest.mark.lab]

ERROR_RATE_QUERY = (FIXTURES / "flagger-metric-template.yaml").read_text().split("query: |\n", 1)[1]


@dataclass
class Pod:
    namespace: str
    name: str
    port: int
    image: str


SCENARIOS = {"healthy": "demo:v2", "faulty": "demo:v2-faulty", "slow": "demo:v2-slow", "idle": "demo:v2", "broken": "demo:v2-broken"}


def _start_pod(pod: Pod, run_dir: Path) -> procs.Proc:
    """The pod's demo process, on a free loopback port (``pod.port`` says which)."""

    def start_at(port: int) -> procs.Proc:
        argv = [sys.executable, "-m", "canary.lab.demoapp", "--listen", f"127.0.0.1:{port}", "--image", pod.image]
        return procs.start(f"{pod.namespace}-{pod.name}", argv, run_dir)

    def ready(proc: procs.Proc, port: int) -> None:
        procs.wait_until(proc, lambda: procs.http_ok(f"http://127.0.0.1:{port}/healthz"), 20, "demo /healthz")

    proc, pod.port = procs.start_listening(start_at, ready, run_dir)
    return proc


def _start_prometheus(run_dir: Path) -> tuple[procs.Proc, str]:
    proc, port = procs.start_listening(
        lambda port: lab_prometheus.start(run_dir, f"127.0.0.1:{port}"),
        lambda proc, port: lab_prometheus.wait_ready(proc, f"http://127.0.0.1:{port}"), run_dir)
    return proc, f"http://127.0.0.1:{port}"


def _drive(port: int, requests_total: int, seconds: float) -> int:
    """Bounded load: ``requests_total`` GETs spread over about ``seconds``; returns how many were answered."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))
    answered = 0
    begin = time.monotonic()
    deadline = begin + seconds * 3

    def one(i: int) -> int:
        time.sleep(max(0.0, begin + i * seconds / requests_total - time.monotonic()))
        if time.monotonic() > deadline:
            return 0
        try:
            session.get(f"http://127.0.0.1:{port}/", timeout=5)
            return 1
        except requests.RequestException:
            return 0

    with ThreadPoolExecutor(max_workers=16) as pool:
        answered = sum(pool.map(one, range(requests_total)))
    return answered


def _wait_for_targets(url: str, count: int) -> None:
    """Traffic must start after the first scrape, or rate() misses its beginning."""
    provider = PrometheusProvider(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if provider.run_query("count(up == 1)") >= count:
                time.sleep(1.2)
                return
        except NoValues:
            pass
        time.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape {count} targets within 30s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("prom")
    pods: list[Pod] = []
    started: list[procs.Proc] = []
    try:
        for namespace, image in SCENARIOS.items():
            for track, img in (("stable", "demo:v1"), ("canary", image)):
                pods.append(Pod(namespace, f"web-{track}-5d8f7c9b4-x{len(pods)}k2", 0, img))
        for pod in pods:
            started.append(_start_pod(pod, run_dir))
        lab_prometheus.write_config(run_dir)
        lab_prometheus.write_targets(
            run_dir,
            [(f"127.0.0.1:{p.port}", {"namespace": p.namespace, "kubernetes_pod_name": p.name, "track": p.name.split("-")[1]}) for p in pods],
        )
        prom, url = _start_prometheus(run_dir)
        started.append(prom)
        _wait_for_targets(url, len(pods))
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(_drive, p.port, 150, 6.0) for p in pods if p.namespace != "idle"]
            answered = [f.result() for f in futures]
        assert all(a >= 140 for a in answered), answered
        time.sleep(3)  # two more scrapes after the last request
        yield {"url": url, "pods": pods, "run_dir": run_dir}
    finally:
        for proc in started:
            procs.stop(proc.name, run_dir)


def _spec(namespace: str, error_rate: str | None = None) -> Any:
    values = base_values()
    values["app"]["namespace"] = namespace
    query = error_rate or ERROR_RATE_QUERY.replace('namespace="prod"', 'namespace="{{ namespace }}"').replace("[1m]", "[{{ interval }}]")
    values["metricTemplates"] = {"error-rate": {"provider": {"type": "prometheus"}, "query": query}}
    # 150 requests cannot show a 1 % error rate at 95 % confidence (evidence): the absolute checks are tested
    # here, the evidence rule by test_a_rate_on_too_few_requests_holds_on_real_data
    values["analysis"]["metrics"] = [
        {"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "interval": "30s", "evidence": "none"},
        {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "30s"},
        {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "30s", "evidence": "none"},
    ]
    return parse_spec(values)


def _tick(url: str, namespace: str, failed_in_row: int = 0, weight: int = 10, spec: Any = None) -> analysis.TickResult:
    provider = PrometheusProvider(url)
    ctx = analysis.TickContext(failed_in_row=failed_in_row, weight=weight)
    return analysis.run_tick(spec or _spec(namespace), lambda address: provider, ctx)


def test_healthy_canary_passes(lab: dict[str, Any]) -> None:
    result = _tick(lab["url"], "healthy")
    assert result.outcome is Outcome.ADVANCE, result.reason
    values = {c.metric: c.value for c in result.checks}
    assert values["error-rate"] == pytest.approx(0, abs=0.01)
    assert values["request-success-rate"] == pytest.approx(100, abs=0.01)
    assert values["request-duration"] is not None and values["request-duration"] < 100


def test_faulty_canary_fails_error_rate(lab: dict[str, Any]) -> None:
    result = _tick(lab["url"], "faulty")
    checks = {c.metric: c for c in result.checks}
    assert checks["error-rate"].verdict is Verdict.FAIL
    assert checks["error-rate"].value is not None and 8 < checks["error-rate"].value < 35  # 20 % of 500s, 150 requests
    assert checks["error-rate"].reason.startswith("error-rate ") and "> max 1" in checks["error-rate"].reason
    assert checks["request-duration"].verdict is Verdict.PASS  # every metric is evaluated
    assert result.outcome is Outcome.FAIL and result.failed_in_row == 1


def test_a_rate_on_too_few_requests_holds_on_real_data(lab: dict[str, Any]) -> None:
    """150 healthy canary requests: the error rate is 0, but its 95 % bound is above 1 %: not a pass (16.3)."""
    spec = _spec("healthy")
    metrics = [m.model_copy(update={"evidence": "auto"}) if m.name == "error-rate" else m for m in spec.analysis.metrics]
    spec = spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"metrics": metrics})})
    result = _tick(lab["url"], "healthy", spec=spec)
    check = next(c for c in result.checks if c.metric == "error-rate")
    assert check.value == pytest.approx(0, abs=0.01) and check.requests is not None and 100 < check.requests < 200
    assert check.verdict is Verdict.INCONCLUSIVE and check.bound is not None and check.bound > 1
    assert result.outcome is Outcome.HOLD, result.reason


def test_slow_canary_fails_p95(lab: dict[str, Any]) -> None:
    result = _tick(lab["url"], "slow")
    checks = {c.metric: c for c in result.checks}
    assert checks["request-duration"].verdict is Verdict.FAIL
    assert checks["request-duration"].value is not None and checks["request-duration"].value > 500
    assert checks["error-rate"].verdict is Verdict.PASS


def test_a_canary_answering_only_5xx_is_at_100_percent_errors_not_no_data(lab: dict[str, Any]) -> None:
    # it has no series of answers other than 5xx: the built-in rates read it as no data, which
    # onNoData: pass (or hold, until holdLimit) let through while every user got a 500
    lab_stack = stackfile.load((Path(__file__).parents[2] / "stacks" / "Pulumi.lab.yaml").read_text())
    spec = _spec("broken", lab_stack["config"]["canary:metricTemplates"]["error-rate"]["query"])
    metrics = [m.model_copy(update={"on_no_data": NoDataPolicy.PASS}) for m in spec.analysis.metrics]
    metrics.append(metrics[-1].model_copy(update={"name": "request-error-rate", "threshold_range": ThresholdRange(max=1)}))
    spec = spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"metrics": metrics})})
    checks = {c.metric: c for c in _tick(lab["url"], "broken", spec=spec).checks}
    assert checks["request-success-rate"].value == pytest.approx(0) and checks["request-success-rate"].verdict is Verdict.FAIL
    assert checks["request-error-rate"].value == pytest.approx(100) and checks["request-error-rate"].verdict is Verdict.FAIL
    assert checks["error-rate"].value == pytest.approx(100) and checks["error-rate"].verdict is Verdict.FAIL  # the lab's template


def test_prometheus_takes_a_step_and_a_timeout_that_are_not_whole_seconds(lab: dict[str, Any]) -> None:
    provider = PrometheusProvider(lab["url"], timeout=timedelta(milliseconds=1500))
    assert provider.run_range('sum(http_requests_total{namespace="healthy"})', 30, 10 / 3)
    assert provider.run_query('sum(http_requests_total{namespace="healthy"})') > 0


def test_canary_without_traffic_is_no_data(lab: dict[str, Any]) -> None:
    result = _tick(lab["url"], "idle")
    assert all(c.verdict is Verdict.NO_DATA for c in result.checks), [c.reason for c in result.checks]
    assert result.outcome is Outcome.FAIL  # no data never passes under the default policy


def test_stable_traffic_does_not_count_for_the_canary(lab: dict[str, Any]) -> None:
    provider = PrometheusProvider(lab["url"])
    stable_requests = provider.run_query('sum(increase(http_requests_total{namespace="faulty",kubernetes_pod_name=~"web-stable-.*"}[5m]))')
    canary_requests = provider.run_query('sum(increase(http_requests_total{namespace="faulty",kubernetes_pod_name=~"web-canary-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)?"}[5m]))')
    assert stable_requests > 50 and canary_requests > 50
    with pytest.raises(NoValues):  # the stable pod never answered 500: that series does not exist
        provider.run_query('sum(increase(http_requests_total{namespace="faulty",kubernetes_pod_name=~"web-stable-.*",status="500"}[5m]))')


def test_provider_typed_errors(lab: dict[str, Any]) -> None:
    provider = PrometheusProvider(lab["url"])
    with pytest.raises(BadQuery, match="rejected the query"):
        provider.run_query("sum(rate(http_requests_total[1m])")
    with pytest.raises(MultipleValues, match="series"):
        provider.run_query('sum by (namespace) (http_requests_total)')
    with pytest.raises(NoValues):
        provider.run_query('http_requests_total{namespace="nowhere"}')
    with pytest.raises(NoValues, match="NaN"):
        provider.run_query("0/0")
    assert provider.run_query("vector(42)") == 42
    assert provider.run_query("scalar(vector(7))") == 7
    assert provider.is_online()


def test_stopped_prometheus_gives_errors_never_a_pass(tmp_path: Path) -> None:
    prom, url = _start_prometheus(tmp_path)
    try:
        assert PrometheusProvider(url).is_online()
    finally:
        procs.stop(prom.name, tmp_path)
    provider = PrometheusProvider(url)
    assert not provider.is_online()
    result = analysis.run_tick(_spec("healthy"), lambda address: provider, analysis.TickContext(failed_in_row=2, weight=30))
    assert all(c.verdict is Verdict.ERROR for c in result.checks)
    assert all("ProviderUnreachable" in c.reason for c in result.checks)
    assert result.outcome is Outcome.ROLLBACK and "3 checks in a row at weight 30" in result.reason


def _check_cli(lab: dict[str, Any], tmp_path: Path, query: str, in_the_lab: bool = False) -> Any:
    """``canary check s`` of a project in ``tmp_path`` — or, ``in_the_lab``, of the local lab's working
    copy (``tmp_path/lab/project``), with ``--lab`` and ``CANARY_LAB_DIR``, from a directory outside it."""
    import subprocess

    values = base_values()
    values["app"]["namespace"] = "healthy"
    values["prometheus"] = {"address": lab["url"]}
    values["metricTemplates"] = {"error-rate": {"provider": {"type": "prometheus"}, "query": query}}
    values["analysis"]["metrics"] = [{"name": "error-rate", "templateRef": {"name": "error-rate"}, "thresholdRange": {"max": 1}, "interval": "30s",
                                      "evidence": "none"}]
    project = tmp_path / "lab" / "project" if in_the_lab else tmp_path
    (project / "stacks").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: canary\nruntime: python\nstackConfigDir: stacks\n")
    (project / "stacks" / "Pulumi.s.yaml").write_text(stackfile.dump_stack_file(parse_stack(values)))
    if in_the_lab:
        (tmp_path / "lab" / "source").write_text(str(tmp_path / "source"))  # the project `lab up` was run for, as it writes it
        (tmp_path / "elsewhere").mkdir()
        env = {k: v for k, v in os.environ.items() if k != "CANARY_PROJECT_DIR"}
        return subprocess.run([sys.executable, "-m", "canary", "check", "s", "--lab"], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path / "elsewhere", env={**env, "CANARY_LAB_DIR": str(tmp_path / "lab")})
    return subprocess.run([sys.executable, "-m", "canary", "check", "s", "--project-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)


def test_check_refuses_a_query_prometheus_rejects_with_exit_2(lab: dict[str, Any], tmp_path: Path) -> None:
    done = _check_cli(lab, tmp_path, 'sum(rate(http_requests_total{namespace="{{ namespace }}"}))')  # rate() of an instant vector
    assert done.returncode == 2, done.stdout + done.stderr
    assert "metricTemplates.error-rate.query" in done.stderr and "Prometheus rejected it" in done.stderr and "range vector" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("in_the_lab", [False, True], ids=["project", "lab"])
def test_check_runs_a_tick_on_a_query_prometheus_accepts(lab: dict[str, Any], tmp_path: Path, in_the_lab: bool) -> None:
    """Also with ``--lab``, which every other command reading a stack takes (check refused it)."""
    done = _check_cli(lab, tmp_path, ERROR_RATE_QUERY.replace('namespace="prod"', 'namespace="{{ namespace }}"').replace("[1m]", "[{{ interval }}]"),
                      in_the_lab)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error-rate" in done.stdout and "within max 1" in done.stdout
