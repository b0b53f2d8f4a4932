"""Time to a verified state after each fault, read from the journals the fault tests leave behind.

    .venv/bin/python -m pytest tests/lab/test_crash_lab.py tests/lab/test_webhooks_lab.py tests/lab/test_faults_lab.py --basetemp /tmp/faults
    .venv/bin/python bench/fault_times.py /tmp/faults

The journal lives in the cluster (ConfigMaps in the app's namespace), which goes
with each test's stack at its teardown; what stays is the local cache every
release and resume writes first, under the test's project
(``<basetemp>/[popen-gwN/]<test>/project/.canary/<stack>/<app>/journal.jsonl``),
read here with ``canary.state.cache``. (The cache holds what that project's
processes wrote: all of a test's journal, since the release and its resume run
from the same project; unset ``CANARY_STATE_DIR`` for the pytest run, or the
caches go there instead.)

For every test's release it prints the release's end phase and, from the journal:
how long `canary resume` took from its start to the end state verified in the
cluster (when the test resumed), and how long the release took from its first
rollback decision to that verified state (when it rolled back).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canary.core import records
from canary.state.cache import Cache


def _t(record: Any) -> float:
    return datetime.fromisoformat(record.time.replace("Z", "+00:00")).timestamp()


def journals(basetemp: Path) -> list[tuple[str, Path, str, str]]:
    """(test, state root, stack, app) of every local journal cache under ``basetemp``, pytest's ``current`` links left out."""
    found = []
    for journal in sorted(basetemp.rglob("project/.canary/*/*/journal.jsonl")):
        parts = journal.relative_to(basetemp).parts
        if any(basetemp.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
            continue  # pytest's "current" links repeat a run
        app_dir = journal.parent
        stack_dir = app_dir.parent
        root = stack_dir.parent  # <test>/project/.canary
        found.append((root.parent.parent.name, root, stack_dir.name, app_dir.name))
    return found


def read(root: Path, stack: str, app: str) -> dict[str, list[Any]]:
    """The cached journal's records (``canary.core.records``), by release, in the order they were written."""
    by_release: dict[str, list[Any]] = {}
    for data in Cache(root, stack, app).records():
        try:
            record = records.parse(data)
        except ValueError:
            continue
        by_release.setdefault(record.release, []).append(record)
    return by_release


def summarise(journal: list[Any]) -> dict[str, Any] | None:
    states = [r for r in journal if r.type == "state"]
    if not states:
        return None
    verified = [r for r in journal if r.type == "verified" and r.what == "end state"]
    resumed = [r for r in journal if r.type == "event" and r.message.startswith("resuming release")]
    rollback = [r for r in journal if r.type == "state" and r.message.startswith("rolling back")]
    end = verified[-1] if verified else None
    return {
        "phase": states[-1].phase,
        "resume_to_verified_s": round(_t(end) - _t(resumed[0]), 2) if end and resumed else None,
        "rollback_to_verified_s": round(_t(end) - _t(rollback[0]), 2) if end and rollback else None,
    }


def _seconds(value: float | None) -> str:
    return f"{value:7.2f}s" if value is not None else "      —"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("basetemp", type=Path, help="the --basetemp of a pytest run of the lab's fault tests")
    args = parser.parse_args()
    found = journals(args.basetemp)
    if not found:
        print(f"no journals under {args.basetemp}", file=sys.stderr)
        return 2
    for test, root, stack, app in found:
        by_release = read(root, stack, app)
        for release, journal in by_release.items():
            summary = summarise(journal)
            if summary is None:
                continue
            label = test if len(by_release) == 1 else f"{test}[{release}]"
            if app != "web":
                label += f" ({app})"
            print(f"{label:<40} {summary['phase']:<10} resume→verified {_seconds(summary['resume_to_verified_s'])}  "
                  f"rollback→verified {_seconds(summary['rollback_to_verified_s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
