"""The CPU a weight step's `up` costs, under settings of the Pulumi processes' environment, on the lab.

    .venv/bin/python bench/up_cpu.py [--rounds 15] [--variant K=V[,K=V...]]... [--json out.json]

Needs the lab (``canary lab up``). On a stack of its own, with the canary
deployed at weight 0, runs weight steps as a release runs them — a release
config file pinning the tracks, an ``up`` limited to the route — alternating
10 and 20, once per variant in each round (round-robin, so that the machine's
drift falls on every variant alike). A variant is a set of environment
variables given to the Pulumi CLI and, through it, to the kubernetes provider;
``default`` (nothing added) is the baseline and always runs.

For each ``up`` it measures the CPU of the Pulumi processes (the CLI and the
provider it reaps: ``RUSAGE_CHILDREN`` of this process, which starts nothing
else meanwhile), the CPU of this process (the inline program and the event
stream; no variant changes it) and the wall time of the ``up``. Prints the
median of each per variant and its ratio to ``default`` in the same run.

The default variants are the Go runtime's garbage collector settings: ``GOGC=off``
with a soft memory limit (collect only near the limit), ``GOGC=400`` (collect
at five times the live heap instead of twice) and ``GOMAXPROCS=1`` (one thread
running Go code: no parallel collection).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from release_speed import Bench, running_lab

from canary.adapters.stack import Stack

DEFAULT_VARIANTS = {
    "GOGC=off,GOMEMLIMIT=1GiB": {"GOGC": "off", "GOMEMLIMIT": "1GiB"},
    "GOGC=400": {"GOGC": "400"},
    "GOMAXPROCS=1": {"GOMAXPROCS": "1"},
}
#: the variables a variant may set: the Go runtime's, nothing that changes what the `up` does
GO_RUNTIME = {"GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG"}


def _variant(text: str) -> tuple[str, dict[str, str]]:
    """``K=V[,K=V...]``: the variant named by its own text."""
    env = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in GO_RUNTIME:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: each item must be K=V with K one of {', '.join(sorted(GO_RUNTIME))}")
        env[key] = value
    return text, env


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="steps per variant (one per round)")
    parser.add_argument("--variant", type=_variant, action="append",
                        help="K=V[,K=V...], Go runtime variables only (default: " + "; ".join(DEFAULT_VARIANTS) + ")")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: the figures are medians")
    variants: dict[str, dict[str, str]] = {"default": {}, **(dict(args.variant) if args.variant else DEFAULT_VARIANTS)}
    for key in GO_RUNTIME:
        if key in os.environ:
            parser.error(f"{key} is set in this environment ({os.environ[key]}): the default variant would not be the runtime's default")
    layout = running_lab()
    if layout is None:
        return 2
    b = Bench(layout, "bench-up-cpu")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        b.deploy()
        facts = b.facts()
        stable = facts.stable
        assert stable is not None
        canary = b.canary_pin(stable, "demo:v2")
        b.apply(b.pins(stable, canary, 0), facts.targets("canary", "route"))
        b.wait_route(0)
        route = facts.targets("route")
        stacks = {name: Stack(b.project, b.name, {**b.env, **env}) for name, env in variants.items()}
        for i in range(args.rounds):
            for name, stack in stacks.items():
                weight = 10 if (i + list(stacks).index(name)) % 2 == 0 else 20
                config = b.config_file(b.pins(stable, canary, weight))
                children, own, start = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
                stack.up(config_file=config, targets=route)
                wall = time.monotonic() - start
                samples[name].append({"pulumi_cpu_s": _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(children),
                                      "own_cpu_s": _cpu(resource.getrusage(resource.RUSAGE_SELF)) - _cpu(own), "wall_s": wall})
                b.wait_route(weight)
    finally:
        b.destroy()
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "rounds": args.rounds, "variants": {}}
    base = {k: statistics.median(s[k] for s in samples["default"]) for k in ("pulumi_cpu_s", "own_cpu_s", "wall_s")}
    print(f"a weight step's up, median of {args.rounds} per variant (ratio to default in this run):")
    for name, runs in samples.items():
        med = {k: statistics.median(s[k] for s in runs) for k in base}
        result["variants"][name] = {"env": variants[name], "median": med, "runs": runs}
        print(f"  {name:<28} Pulumi CPU {med['pulumi_cpu_s']:.3f}s (x{med['pulumi_cpu_s'] / base['pulumi_cpu_s']:.2f})  "
              f"this process {med['own_cpu_s']:.3f}s  wall {med['wall_s']:.3f}s (x{med['wall_s'] / base['wall_s']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
