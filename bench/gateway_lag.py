"""How long the lab's gateway keeps sending requests to the canary after the route is accepted at 0.

    .venv/bin/python bench/gateway_lag.py [--runs 8] [--json out.json]

Needs the lab (``canary lab up``). On a stack of its own: the canary (``demo:v2``)
pinned and the route at 50/50 by a release config file, as a release pins them,
then, for each run, a weight-only ``up`` to 0 (limited to the route, as a
release's step is) while one client sends requests
through the gateway back to back; the release's verification (the route at
100/0 and ``Accepted`` for its generation) is polled every 10 ms. Reports, per
run, the time from that verification to the start of the last request the
canary answered (negative: none after it), and how many requests after it
the canary answered. Bounded: each run sends requests for one second after the
verification, and at most 30 s in all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from release_speed import Bench, running_lab


def one_run(b: Bench, session: requests.Session, url: str, route: list[str], pinned: Callable[[int], dict[str, Any]]) -> tuple[float, int, int]:
    b.apply(pinned(50), route)
    b.wait_route(50)
    settle = time.monotonic() + 5
    while time.monotonic() < settle and session.get(url, timeout=5).headers.get("X-Version") != "v2":
        pass
    time.sleep(2.5)  # more than Traefik's default throttle since the last change, were it on
    config = b.config_file(pinned(0))
    sent: list[tuple[float, str | None]] = []
    stop = threading.Event()
    deadline = time.monotonic() + 30

    def client() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            at = time.monotonic()
            sent.append((at, session.get(url, timeout=5).headers.get("X-Version")))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        b.stack.up(config_file=config, targets=route)
        accepted = b.wait_route(0)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    canary = [at for at, version in sent if version == "v2"]
    after = [version for at, version in sent if at >= accepted]
    return (max(canary) - accepted if canary else float("-inf")), after.count("v2"), len(after)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    layout = running_lab()
    if layout is None:
        return 2
    b = Bench(layout, "bench-gwlag")
    url = f"http://127.0.0.1:{layout.gateway_port}/"
    session = requests.Session()
    session.headers["Host"] = f"{b.name}.lab.test"
    runs = []
    try:
        b.deploy()
        facts = b.facts()
        stable = facts.stable
        assert stable is not None
        canary = b.canary_pin(stable, "demo:v2")

        def pinned(weight: int) -> dict[str, Any]:
            return b.pins(stable, canary, weight)

        b.apply(pinned(50), facts.targets("canary", "route"))
        route = facts.targets("route")
        for _ in range(args.runs):
            runs.append(one_run(b, session, url, route, pinned))
    finally:
        b.destroy()
    for i, (lag, late, total) in enumerate(runs):
        print(f"run {i}: last canary answer to a request sent {lag * 1000:+.0f} ms after the route was accepted at 0; "
              f"{late} of {total} requests after it answered by the canary")
    lags = [max(lag, 0.0) for lag, _, _ in runs]
    print(f"median {statistics.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms (0: no canary answer after the verification)")
    if args.json:
        args.json.write_text(json.dumps([{"lag_s": lag if lag != float("-inf") else None, "canary_after": late, "after": total} for lag, late, total in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
