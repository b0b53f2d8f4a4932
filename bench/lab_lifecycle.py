"""Lab figures: warm `lab up` and `lab down` times, and the lab's memory while it runs.

    .venv/bin/python bench/lab_lifecycle.py [--runs 3]

Starts from a stopped lab (it stops a running one first), runs `canary lab up`
and `canary lab down` RUNS times (warm: tools built, lab data kept), and,
while the lab is up, sums the resident memory of every lab process and its
children (the demo processes of the pods the lab's stacks run). Prints
medians and every sample.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canary.lab import procs
from canary.lab.layout import Layout

CANARY = [sys.executable, "-m", "canary"]


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(layout: Layout) -> tuple[dict[str, float], float]:
    per_component = {}
    for name, pid in procs.recorded(layout.dir).items():
        per_component[name] = (_rss_kib(pid) + sum(_rss_kib(c) for c in procs.descendants(pid))) / 1024
    return per_component, sum(per_component.values())


def timed(*args: str) -> float:
    start = time.monotonic()
    subprocess.run([*CANARY, *args], check=True, capture_output=True, cwd=ROOT, timeout=600)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    layout = Layout.for_project(ROOT)
    timed("lab", "down")
    ups, downs = [], []
    for _ in range(args.runs):
        ups.append(timed("lab", "up"))
        time.sleep(3)  # let the pods' demo processes start
        per_component, total = memory(layout)
        downs.append(timed("lab", "down"))
    print(f"warm lab up:  median {statistics.median(ups):.1f}s  ({', '.join(f'{u:.1f}' for u in ups)})")
    print(f"lab down:     median {statistics.median(downs):.1f}s  ({', '.join(f'{d:.1f}' for d in downs)})")
    print(f"lab memory (last run, RSS incl. children): {total:.0f} MiB")
    for name, mib in sorted(per_component.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {mib:7.1f} MiB")
    timed("lab", "up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
