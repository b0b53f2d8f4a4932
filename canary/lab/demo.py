"""The demo on the lab: reset the lab stack to its stable state, and print a release's timeline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from canary.adapters import stackfile
from canary.adapters.stack import Stack
from canary.lab import cluster
from canary.lab.layout import Layout


def reset(layout: Layout, image: str = "demo:v1") -> None:
    """The lab stack back to ``image`` on stable, the route at rest, no canary: set the image in the
    working copy's stack file and run a plain ``up`` that rolls it out directly (the lab's own reset,
    not a release)."""
    path = stackfile.stack_file(layout.project, cluster.LAB_STACK)
    stackfile.set_value(path, ("canary:app", "image"), image)
    stack = Stack(layout.project, cluster.LAB_STACK, {**os.environ, **layout.pulumi_env()})
    config = layout.dir / "reset.config.yaml"
    text = stackfile.release_config(path.read_text(), {})
    document = stackfile.load(text)
    document["config"].pop("canary:release", None)
    document["config"]["canary:rollout"] = "direct"
    config.write_text(stackfile.dump(document))
    stack.up(config_file=config)


def timeline(records: Sequence[Any]) -> str:
    """One line per decision, state change, check and ``up``, with seconds since the release began."""
    if not records:
        return "(no records)"
    start = _time(records[0].time)
    lines = []
    for r in records:
        at = _time(r.time) - start
        if r.type in ("state", "decision", "event"):
            text = r.message
        elif r.type == "tick":
            text = "checks: " + "; ".join(c.reason for c in r.checks)
        elif r.type == "up":
            text = f"pulumi up ({', '.join(r.targets) or 'all'}) {r.seconds:.1f}s"
        else:
            continue
        lines.append(f"  +{at:6.1f}s  {r.phase:<16} w={r.weight:<3} {text}")
    return "\n".join(lines)


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
