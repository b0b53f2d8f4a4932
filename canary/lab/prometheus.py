"""A real Prometheus for the lab and the integration tests: config, start, readiness.

Scrapes every second the targets listed in a file_sd JSON file that the caller
keeps up to date (``write_targets``), each with the labels the metric queries
select on (``namespace``, ``kubernetes_pod_name``, ``track``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from canary.adapters import stackfile
from canary.errors import LabError
from canary.lab import procs

SCRAPE_INTERVAL = "1s"


def binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise LabError("prometheus: not installed (Debian package prometheus); run the README's set-up command")
    return path


def write_config(run_dir: Path, pushgateway: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "pods",
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "file_sd_configs": [{"files": [str(run_dir / "targets.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    if pushgateway:
        # releases push their metrics there (job canary); their own labels are kept
        config["scrape_configs"].append(  # type: ignore[attr-defined]
            {"job_name": "pushgateway", "honor_labels": True, "scrape_interval": SCRAPE_INTERVAL, "static_configs": [{"targets": [pushgateway]}]})
    path = run_dir / "prometheus.yml"
    path.write_text(stackfile.dump(config))
    if not (run_dir / "targets.json").exists():
        write_targets(run_dir, [])
    return path


def write_targets(run_dir: Path, targets: Sequence[tuple[str, Mapping[str, str]]]) -> None:
    """Replace the scrape targets atomically: (host:port, labels) pairs."""
    data = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
    tmp = run_dir / "targets.json.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run_dir / "targets.json")


def start(run_dir: Path, listen: str, prefix: Sequence[str] = (), name: str = "prometheus", proc_dir: Path | None = None,
          pushgateway: str | None = None) -> procs.Proc:
    """Start Prometheus on ``listen`` (host:port) with its data in ``run_dir``.

    ``prefix`` runs it elsewhere (e.g. ip netns exec); its log and pid file go to
    ``proc_dir`` (default ``run_dir``).
    """
    config = write_config(run_dir, pushgateway)
    argv = [
        *prefix, binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={run_dir / 'data'}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--web.enable-lifecycle",
    ]
    return procs.start(name, argv, proc_dir or run_dir)


def start_pushgateway(listen: str, prefix: Sequence[str] = (), proc_dir: Path | None = None) -> procs.Proc:
    """Debian's Prometheus Pushgateway on ``listen``, metrics in memory only."""
    path = shutil.which("prometheus-pushgateway")
    if path is None:
        raise LabError("pushgateway: not installed (Debian package prometheus-pushgateway); run the README's set-up command")
    assert proc_dir is not None
    return procs.start("pushgateway", [*prefix, path, f"--web.listen-address={listen}"], proc_dir)


def wait_ready(proc: procs.Proc, base_url: str, timeout: float = 30.0) -> None:
    procs.wait_until(proc, lambda: procs.http_ok(f"{base_url}/-/ready"), timeout, f"GET {base_url}/-/ready")
