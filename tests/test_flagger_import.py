"""import-flagger: the reference manifests convert with every field carried over; the rest is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canary import flagger, stackconfig
from canary.errors import InvalidSpec
from tests.conftest import FIXTURES, ROOT

CANARY = FIXTURES / "flagger-canary.yaml"
TEMPLATE = FIXTURES / "flagger-metric-template.yaml"


def _convert(*paths: Path, **kwargs: object) -> flagger.ImportResult:
    return flagger.convert(flagger.load_manifests([(str(p), p.read_text()) for p in paths]), **kwargs)  # type: ignore[arg-type]


def test_reference_fixture_converts_with_every_field() -> None:
    result = _convert(CANARY, TEMPLATE)
    spec = result.spec
    a = spec.analysis
    assert (spec.app.name, spec.app.namespace, spec.app.service_port, spec.app.port) == ("web", "prod", 80, 8080)
    assert a.interval.total_seconds() == 60 and a.threshold == 3 and a.step_weight == 10 and a.max_weight == 50
    error_rate, duration = a.metrics
    assert error_rate.name == "error-rate" and error_rate.template_ref is not None and error_rate.template_ref.name == "error-rate"
    assert error_rate.threshold_range.max == 1 and error_rate.interval is not None and error_rate.interval.total_seconds() == 60
    assert duration.name == "request-duration" and duration.template_ref is None and duration.threshold_range.max == 500
    (hook,) = a.webhooks
    assert (hook.name, hook.type.value, hook.cmd, hook.timeout.total_seconds()) == ("load-test", "rollout", "hey -z 1m -q 10 -c 2 http://web-canary.prod:80/", 15)
    template = spec.metric_templates["error-rate"]
    assert template.provider.address == "http://prometheus.monitoring:9090"
    assert template.query == yaml.safe_load(TEMPLATE.read_text())["spec"]["query"].strip()
    assert any("flagger-loadtester" in n and "metadata.cmd" in n for n in result.notes)


def test_import_is_equivalent_to_the_prod_stack() -> None:
    prod = stackconfig.load_stack_file(stackconfig.stack_file(ROOT, "prod"))
    imported = _convert(CANARY, TEMPLATE, stable_image=prod.stable_image).spec
    assert imported.analysis == prod.analysis
    assert imported.metric_templates["error-rate"].query.strip() == prod.metric_templates["error-rate"].query.strip()
    assert imported.stable_image == prod.stable_image


def test_unsupported_fields_are_reported_by_name(tmp_path: Path) -> None:
    doc = yaml.safe_load(CANARY.read_text())
    doc["spec"]["progressDeadlineSeconds"] = 60
    doc["spec"]["analysis"]["iterations"] = 10
    doc["spec"]["analysis"]["match"] = [{"headers": {"x": {"exact": "y"}}}]
    doc["spec"]["analysis"]["metrics"][0]["query"] = "up"
    doc["spec"]["service"]["retries"] = {"attempts": 3}
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(doc))
    notes = "\n".join(_convert(path, TEMPLATE).notes)
    for field in ("spec.progressDeadlineSeconds", "spec.analysis.iterations", "spec.analysis.match", "spec.analysis.metrics[0].query", "spec.service.retries"):
        assert f"{field}: not supported" in notes


def test_missing_template_is_an_error() -> None:
    with pytest.raises(InvalidSpec, match="templateRef.name"):
        _convert(CANARY)


def test_non_prometheus_provider_is_refused(tmp_path: Path) -> None:
    doc = yaml.safe_load(TEMPLATE.read_text())
    doc["spec"]["provider"]["type"] = "datadog"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidSpec, match="must be prometheus"):
        _convert(CANARY, path)


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canary", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_cli_import_prints_valid_stack_config(tmp_path: Path) -> None:
    done = _cli("import-flagger", str(CANARY), str(TEMPLATE), "--stable-image", "registry.example.com/shop/web:1.8.0", "--gateway", "public.gateway:https")
    assert done.returncode == 0, done.stderr
    assert "note: spec.analysis.webhooks[0].url" in done.stderr
    out = tmp_path / "Pulumi.imported.yaml"
    out.write_text(done.stdout)
    spec = stackconfig.load_stack_file(out)
    assert spec.gateway.parent_refs[0].model_dump(exclude_none=True) == {"name": "public", "namespace": "gateway", "section_name": "https"}
    assert "maxWeight: 50" in done.stdout and "threshold: 3" in done.stdout
    validated = _cli("validate", "--file", str(out))
    assert validated.returncode == 0, validated.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [", "must be valid YAML"),
        ("apiVersion: v1\nkind: ConfigMap\n", "exactly one Canary"),
        ("apiVersion: other/v1\nkind: Canary\n", "must be flagger.app/v1beta1"),
        ("just text", "must be a Kubernetes manifest"),
    ],
)
def test_cli_import_bad_manifests_exit_2(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    done = _cli("import-flagger", str(path))
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""


def test_cli_import_missing_file_exit_2(tmp_path: Path) -> None:
    done = _cli("import-flagger", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "nope.yaml" in done.stderr
