"""Lab lifecycle: down leaves nothing behind, up after down works, a broken component fails loudly.

Disruptive: it stops the shared lab, so it holds the lab alone and leaves it running again.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from canary.errors import LabError
from canary.lab import cluster, netns, procs
from canary.lab.layout import Layout


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.disruptive
def test_down_leaves_no_process_and_no_port_then_up_works_again(lab: Layout) -> None:
    pids = procs.recorded(lab.dir)
    assert len(pids) >= 8
    done = subprocess.run([sys.executable, "-m", "canary", "lab", "down"], capture_output=True, text=True, timeout=120, cwd=lab.project_dir)
    assert done.returncode == 0, done.stderr
    assert not [pid for pid in pids.values() if procs.pid_alive(pid)]
    assert not netns.exists(lab.netns)
    assert not [p for p in (lab.api_port, lab.gateway_port, lab.prometheus_port, lab.pushgateway_port) if _listening(p)]
    assert not _processes_mentioning(str(lab.dir)), _processes_mentioning(str(lab.dir))
    assert not _processes_mentioning("demoapp.py --listen 10.244.")
    done = subprocess.run([sys.executable, "-m", "canary", "lab", "up"], capture_output=True, text=True, timeout=300, cwd=lab.project_dir)
    assert done.returncode == 0, done.stderr
    assert cluster.running(lab), cluster.status(lab)


def test_a_component_that_cannot_start_fails_lab_up_with_its_name_and_log(lab: Layout, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    for entry in lab.tools_dir.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (tools / entry.name).symlink_to(entry)
    broken = tools / f"kubernetes-{lab.versions['KUBERNETES_VERSION']}"
    broken.unlink()
    (broken / "bin").mkdir(parents=True)
    real = lab.tools_dir / broken.name / "bin"
    for binary in ("kube-controller-manager", "kube-scheduler"):
        (broken / "bin" / binary).symlink_to(real / binary)
    script = broken / "bin" / "kube-apiserver"
    script.write_text("#!/bin/sh\necho 'E0101 storage backend unreachable: injected by the test' >&2\nexit 1\n")
    script.chmod(0o755)
    (broken / ".complete").touch()
    layout = replace(lab, dir=tmp_path / "lab", tools_dir=tools, netns="canary-labfail", api_port=26443, gateway_port=28080, prometheus_port=29090,
                     pushgateway_port=29091, etcd_port=22379)
    with pytest.raises(LabError) as info:
        cluster.up(layout, say=lambda line: None)
    message = str(info.value)
    assert message.startswith("kube-apiserver"), message
    assert "injected by the test" in message  # the log's last lines
    assert not netns.exists("canary-labfail")  # nothing half-started is left behind
    assert not [pid for pid in procs.recorded(layout.dir).values() if procs.pid_alive(pid)]
    assert not _processes_mentioning(str(layout.dir))
