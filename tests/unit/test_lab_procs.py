"""The lab's components outlive the process that starts them (``lab up`` returns, the lab runs on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from canary.adapters.processes import pid_alive
from canary.lab import procs

STARTER = "import pathlib, sys; from canary.lab import procs; procs.start('sleeper', ['sleep', '60'], pathlib.Path(sys.argv[1]))"


def test_a_component_left_running_when_its_starter_exits_is_no_warning_and_runs_on(tmp_path: Path) -> None:
    # A pytest worker that restored the lab printed "Exception ignored in Popen.__del__: ResourceWarning:
    # subprocess … is still running" at exit, once per component, under the project's warnings-as-errors.
    try:
        done = subprocess.run([sys.executable, "-W", "error", "-c", STARTER, str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert pid_alive(procs.recorded(tmp_path)["sleeper"])
    finally:
        procs.stop("sleeper", tmp_path, grace=1)
    assert procs.recorded(tmp_path) == {}
