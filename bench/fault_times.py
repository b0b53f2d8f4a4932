"""Time to a verified state after each fault, read from the journals the fault tests leave behind.

    .venv/bin/python -m pytest tests/lab/test_w_crash_lab.py tests/lab/test_y_faults_lab.py --basetemp /tmp/faults
    .venv/bin/python bench/fault_times.py /tmp/faults

For every test's stack it prints the release's end phase and, from the journal:
how long `canary resume` took from its start to the end state verified in the
cluster (when the test resumed), and how long the release took from its first
rollback decision to that verified state (when it rolled back).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canary.journal import record_time as _t  # noqa: E402


def summarise(journal: Path) -> dict[str, Any] | None:
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    states = [r for r in records if r["type"] == "state"]
    if not states:
        return None
    verified = [r for r in records if r["type"] == "verified"]
    resumed = [r for r in records if r["type"] == "event" and r.get("message", "").startswith("resuming release")]
    rollback = [r for r in records if r["type"] == "state" and r.get("message", "").startswith("rolling back")]
    end = verified[-1] if verified else None
    return {
        "phase": states[-1]["phase"],
        "resume_to_verified_s": round(_t(end) - _t(resumed[0]), 2) if end and resumed else None,
        "rollback_to_verified_s": round(_t(end) - _t(rollback[0]), 2) if end and rollback else None,
    }


def _seconds(value: float | None) -> str:
    return f"{value:7.2f}s" if value is not None else "      —"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("basetemp", type=Path, help="the --basetemp of a pytest run of the lab's fault tests")
    args = parser.parse_args()
    found = sorted(args.basetemp.glob("*/project/.canary/*/journal.jsonl"))
    if not found:
        print(f"no journals under {args.basetemp}", file=sys.stderr)
        return 2
    for journal in found:
        if journal.parents[3].is_symlink():  # pytest's "current" links repeat a run
            continue
        test = journal.parents[3].name
        summary = summarise(journal)
        if summary is None:
            continue
        print(f"{test:<40} {summary['phase']:<10} resume→verified {_seconds(summary['resume_to_verified_s'])}  "
              f"rollback→verified {_seconds(summary['rollback_to_verified_s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
