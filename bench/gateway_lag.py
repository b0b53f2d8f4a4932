"""How long the lab's gateway keeps sending requests to the canary after the route is accepted at 0.

    .venv/bin/python bench/gateway_lag.py [--runs 8] [--json out.json]

Needs the lab (``canary lab up``). On a stack of its own: the route at 50/50,
then, for each run, a weight-only ``up`` to 0 while one client sends requests
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
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from release_speed import Bench, running_lab  # noqa: E402

from canary.release import target_urn  # noqa: E402


def one_run(b: Bench, session: requests.Session, url: str, route: list[str]) -> tuple[float, int, int]:
    b.stack.set_config({"canaryWeight": 50})
    b.stack.up(target=route)
    b.wait_route(50)
    settle = time.monotonic() + 5
    while time.monotonic() < settle and session.get(url, timeout=5).headers.get("X-Version") != "v2":
        pass
    time.sleep(2.5)  # more than Traefik's default throttle since the last change, were it on
    b.stack.set_config({"canaryWeight": 0})
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
        b.stack.up(target=route)
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
    route = [target_urn(b.name, "route")]
    runs = []
    try:
        b.stack.set_config({"canaryImage": "demo:v2", "canaryWeight": 50})
        b.stack.up()
        for _ in range(args.runs):
            runs.append(one_run(b, session, url, route))
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
