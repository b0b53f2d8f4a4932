"""Reads of a stack's config and state from its files, each standing in for a CLI process.

Both must give exactly what the CLI gives, or step aside (None) so that the CLI
does it; tests/lab/test_lab.py compares them with the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canary.stack import file_backend, read_checkpoint
from canary.stackconfig import plain_config, read_stack_file

PROJECT_FILE = "name: canary\nruntime: python\nstackConfigDir: stacks\n"

STACK_FILE = """\
config:
  canary:app:
    name: web
    replicas: 2
    probes: {readiness: {path: /healthz, periodSeconds: 1}}
  canary:stableImage: demo:v1
  canary:canaryWeight: 0
  canary:quoted: "10"
  canary:switch: on
  canary:enabled: true
  canary:analysis:
    interval: 1m
    threshold: 3
    metrics:
      - {name: p99, thresholdRange: {max: 0.5}, interval: 1:30}
  canary:query: |
    sum(rate(x[1m]))
  kubernetes:context: lab
encryptionsalt: v1:salt:v1:xyz
"""


def project(tmp_path: Path, stack_file: str = STACK_FILE, project_file: str = PROJECT_FILE) -> Path:
    (tmp_path / "Pulumi.yaml").write_text(project_file)
    (tmp_path / "stacks").mkdir(exist_ok=True)
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text(stack_file)
    return tmp_path


def test_plain_config_is_the_cli_s_map_objects_as_sorted_compact_json(tmp_path: Path) -> None:
    config = plain_config(project(tmp_path), "dev")
    assert config == {
        "canary:app": '{"name":"web","probes":{"readiness":{"path":"/healthz","periodSeconds":1}},"replicas":2}',
        "canary:stableImage": "demo:v1",
        "canary:canaryWeight": "0",
        "canary:quoted": "10",
        # YAML 1.1 (PyYAML's default) reads `on` as True and 1:30 as 90; the CLI, as these strings
        "canary:switch": "on",
        "canary:enabled": "true",
        "canary:analysis": '{"interval":"1m","metrics":[{"interval":"1:30","name":"p99","thresholdRange":{"max":0.5}}],"threshold":3}',
        "canary:query": "sum(rate(x[1m]))\n",
        "kubernetes:context": "lab",
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("  canary:prometheus: {token: {secure: v1:AAAA}}", "a secret to decrypt"),
        ("  canary:ratio: 0.5", "a top-level float: Go prints it"),
        ("  canary:empty:", "a top-level null"),
        ("  canary:big: 1e3", "an exponent: a float to the CLI, a string to this loader"),
        ("  canary:mask: 0x1F", "hex"),
        ("  canary:mode: 010", "an octal to the CLI"),
        ("  canary:many: 1_000", "underscores in a number"),
        ("  canary:when: 2026-11-27", "a timestamp"),
        ("  canary:limit: .inf", "infinity"),
        ("  canary:app: {name: web, weight: 0x10}", "a nested number the CLI types"),
        ("  canary:app: {ratio: 1.0}", "a whole float: Go's JSON writes 1"),
        ("  canary:app: {ratio: 0.00001}", "a small float: Python writes 1e-05, Go 0.00001"),
        ("  canary:app: {big: 99999999999999999999}", "beyond int64: a float to the CLI"),
        ("  plainkey: 1", "a key without its namespace"),
    ],
)
def test_plain_config_leaves_to_the_cli_what_it_might_read_differently(tmp_path: Path, line: str, why: str) -> None:
    assert plain_config(project(tmp_path, "config:\n" + line + "\n"), "dev") is None, why


def test_plain_config_reads_quoted_forms_of_those_values(tmp_path: Path) -> None:
    config = plain_config(project(tmp_path, 'config:\n  canary:big: "1e3"\n  canary:when: "2026-11-27"\n  canary:app: {weight: "0x10", note: null}\n'), "dev")
    assert config == {"canary:big": "1e3", "canary:when": "2026-11-27", "canary:app": '{"note":null,"weight":"0x10"}'}


@pytest.mark.parametrize(
    ("stack_file", "project_file"),
    [
        ("environment: [prod]\nconfig:\n  canary:a: b\n", PROJECT_FILE),
        ("config:\n  canary:a: b\n", PROJECT_FILE + "config:\n  canary:a: {default: c}\n"),
        ("config:\n  canary:a: b\n", "name: canary\nruntime: python\n"),
        ("config: [a, b]\n", PROJECT_FILE),
        ("config:\n  canary:a: [b\n", PROJECT_FILE),
    ],
    ids=["esc-environment", "project-level-config", "another-stack-config-dir", "config-not-a-mapping", "bad-yaml"],
)
def test_plain_config_leaves_other_files_to_the_cli(tmp_path: Path, stack_file: str, project_file: str) -> None:
    assert plain_config(project(tmp_path, stack_file, project_file), "dev") is None


def test_plain_config_without_a_stack_file_is_left_to_the_cli(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text(PROJECT_FILE)
    assert plain_config(tmp_path, "dev") is None


def test_validation_reads_scalars_as_pulumi_does(tmp_path: Path) -> None:
    path = project(tmp_path, "config:\n  canary:a: on\n  canary:b: {c: no, d: 1:30, e: 3, f: ~}\n") / "stacks" / "Pulumi.dev.yaml"
    assert read_stack_file(path) == {"canary:a": "on", "canary:b": {"c": "no", "d": "1:30", "e": 3, "f": None}}


# --- the state's export --------------------------------------------------------------------------


def backend(tmp_path: Path, checkpoint: object, meta: str = "version: 1\n") -> Path:
    root = tmp_path / "state"
    (root / ".pulumi" / "stacks" / "canary").mkdir(parents=True)
    (root / ".pulumi" / "meta.yaml").write_text(meta)
    (root / ".pulumi" / "stacks" / "canary" / "dev.json").write_text(json.dumps(checkpoint))
    return root


LATEST = {"manifest": {"time": "2026-11-27T00:00:00Z"}, "secrets_providers": {"type": "passphrase"}, "resources": [{"urn": "urn:x", "outputs": {"t": {"ciphertext": "v1:AAAA"}}}]}


def test_read_checkpoint_is_what_stack_export_prints(tmp_path: Path) -> None:
    root = backend(tmp_path, {"version": 3, "checkpoint": {"stack": "organization/canary/dev", "latest": LATEST}})
    assert read_checkpoint(root, "dev") == {"version": 3, "deployment": LATEST}


@pytest.mark.parametrize(
    ("checkpoint", "meta", "extra"),
    [
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 0\n", None),
        ({"version": 2, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 1\n", None),
        ({"version": 3, "checkpoint": {"stack": "dev"}}, "version: 1\n", None),
        ([1, 2], "version: 1\n", None),
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 1\n", "dev.json.gz"),
        ({"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}}, "version: 1\n", "dev.json.zst"),
    ],
    ids=["legacy-layout", "older-checkpoint-version", "no-latest", "not-an-object", "gzip-variant", "zstd-variant"],
)
def test_read_checkpoint_leaves_other_layouts_to_the_cli(tmp_path: Path, checkpoint: object, meta: str, extra: str | None) -> None:
    root = backend(tmp_path, checkpoint, meta)
    if extra:
        (root / ".pulumi" / "stacks" / "canary" / extra).write_bytes(b"\x1f\x8b")
    assert read_checkpoint(root, "dev") is None


def test_read_checkpoint_of_a_missing_stack_or_a_qualified_name_is_left_to_the_cli(tmp_path: Path) -> None:
    root = backend(tmp_path, {"version": 3, "checkpoint": {"stack": "dev", "latest": LATEST}})
    assert read_checkpoint(root, "other") is None
    assert read_checkpoint(root, "organization/canary/dev") is None


def test_file_backend_resolves_the_url_as_the_cli_does(tmp_path: Path) -> None:
    assert file_backend({"PULUMI_BACKEND_URL": "file:///srv/state"}, tmp_path) == Path("/srv/state")
    assert file_backend({"PULUMI_BACKEND_URL": "file://state"}, tmp_path) == tmp_path / "state"
    assert file_backend({"PULUMI_BACKEND_URL": "file://~/state"}, tmp_path) == Path.home() / "state"
    assert file_backend({"PULUMI_BACKEND_URL": "file:///srv/state?no_tmp_dir=true"}, tmp_path) == Path("/srv/state")
    assert file_backend({"PULUMI_BACKEND_URL": "s3://bucket"}, tmp_path) is None
    assert file_backend({}, tmp_path) is None
