"""The validate command: exit codes and messages, as a user sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canary", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "lab"])
def test_validate_stack(stack: str) -> None:
    done = _cli("validate", stack)
    assert done.returncode == 0, done.stderr
    assert f"Pulumi.{stack}.yaml: valid" in done.stdout


def test_validate_file_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((ROOT / "stacks" / "Pulumi.prod.yaml").read_text().replace("threshold: 3", "threshold: 0"))
    done = _cli("validate", "--file", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "analysis.threshold" in done.stderr and "greater than or equal to 1" in done.stderr and "(got 0)" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "nosuchstack"], "no config file Pulumi.nosuchstack.yaml"),
        (["validate"], "give either STACK or --file"),
        (["validate", "prod", "--file", "x.yaml"], "give either STACK or --file"),
        (["validate", "--bogus"], "No such option"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_validate_from_outside_the_project_with_project_dir(tmp_path: Path) -> None:
    done = _cli("validate", "prod", "--project-dir", str(ROOT), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "canary"
    done = subprocess.run([str(exe), "validate", "lab"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("phase", "exit_code", "message"), [
    ("Promoting", 2, "is already Promoting: the new version passed every check"),
    ("Finalising", 2, "is already Finalising"),
    ("Succeeded", 2, "has no release in progress to abort"),
    ("Progressing", 0, "abort requested"),
])
def test_abort_is_refused_once_promotion_started_and_nothing_is_requested(tmp_path: Path, phase: str, exit_code: int, message: str) -> None:
    from canary.journal import Journal, state_root

    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    j = Journal(state_root(project), "prod")
    j.save_state({"release": "r1", "stack": "prod", "phase": phase})
    done = _cli("abort", "prod", "--project-dir", str(project), cwd=tmp_path)
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert message in done.stdout + done.stderr
    assert (j.take_request("abort", "r1") is not None) == (exit_code == 0)


def test_history_names_what_an_up_was_limited_to(tmp_path: Path) -> None:
    from canary.journal import Journal, state_root

    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    j = Journal(state_root(project), "prod")
    common = {"phase": "Progressing", "weight": 0, "config": {}, "changes": {"update": 1}, "seconds": 0.7}
    j.record("r1", "up", targeted=["route", "canary-deployment"], **common)
    j.record("r1", "up", targeted=True, **common)  # a journal written before the targets were named
    j.record("r1", "up", targeted=[], **common)
    done = _cli("history", "prod", "--project-dir", str(project), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = [line.split(" up ", 2)[-1].split("0.7s")[0] for line in done.stdout.splitlines()]
    assert shown == ["(only route, canary-deployment) ", "(only route) ", ""], done.stdout
