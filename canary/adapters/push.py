"""Release metrics pushed to a Prometheus Pushgateway: the only module that imports prometheus-client.

A release is a batch job, so its metrics go the Prometheus way for batch jobs:
pushed (``job="canary"``, grouped by stack and app) after every state change and
tick, and scraped from the Pushgateway. Names and labels follow Flagger's:

- ``canary_status{name,namespace}`` — 0 while the release runs, 1 promoted,
  2 rolled back or aborted, 3 promoted but not verified;
- ``canary_phase{name,namespace,phase}`` — 1 for the current phase;
- ``canary_weight{workload,namespace}`` — each track's share of traffic;
- ``canary_metric_analysis{name,namespace,metric}`` — each metric's last value;
- ``canary_metric_verdict{name,namespace,metric}`` — 1 pass, 0 fail, 0.5 inconclusive, -1 no data or error;
- ``canary_failed_checks{name,namespace,count}`` — failed ticks ``in_row`` and ``total``;
- ``canary_duration_seconds{name,namespace}`` — time since the release began.

A push runs on the release's thread, at every state save: a Pushgateway that
does not answer is reported once, never stops a release, and after each failure
is left alone for ``backoff`` seconds, so that it costs a save its timeout at
most once per back-off (a blackholed one delayed every save, rollback's too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from canary.adapters import http
from canary.core import naming, records
from canary.core.naming import Track

STATUS = {records.Phase.SUCCEEDED: 1, records.Phase.FAILED: 2, records.Phase.ABORTED: 2, records.Phase.PROMOTED_UNVERIFIED: 3}
VERDICT = {records.Verdict.PASS: 1.0, records.Verdict.FAIL: 0.0, records.Verdict.INCONCLUSIVE: 0.5}
#: Every metric name pushed, for the dashboard's check.
NAMES = ("canary_status", "canary_phase", "canary_weight", "canary_metric_analysis", "canary_metric_verdict",
         "canary_failed_checks", "canary_duration_seconds")


class Pusher:
    def __init__(self, address: str, stack: str, app: str, namespace: str, on_failure: Callable[[str], None] | None = None, timeout: float = 2.0,
                 backoff: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.stack = stack
        self.app = app
        self.namespace = namespace
        self.timeout = timeout
        self.backoff = backoff
        self._clock = clock
        self._on_failure = on_failure
        self._failed = False
        self._skip_until: float | None = None
        self._last_checks: tuple[records.Check, ...] = ()

    def push(self, state: records.ReleaseState, tick: records.Tick | None) -> None:
        if self._skip_until is not None and self._clock() < self._skip_until:
            return  # the last push failed: the next state after the back-off carries everything anyway
        registry = CollectorRegistry()
        who = {"name": self.app, "namespace": self.namespace}
        Gauge("canary_status", "0 running, 1 promoted, 2 rolled back or aborted, 3 promoted unverified", ["name", "namespace"],
              registry=registry).labels(**who).set(STATUS.get(state.phase, 0))
        phase = Gauge("canary_phase", "1 for the release's current phase", ["name", "namespace", "phase"], registry=registry)
        for value in records.Phase:
            phase.labels(**who, phase=value.value).set(1 if value is state.phase else 0)
        weight = Gauge("canary_weight", "each track's share of the default route rule", ["workload", "namespace"], registry=registry)
        weight.labels(workload=naming.deployment(self.app, Track.STABLE), namespace=self.namespace).set(100 - state.weight)
        weight.labels(workload=naming.deployment(self.app, Track.CANARY), namespace=self.namespace).set(state.weight)
        checks = tick.checks if tick is not None else state.last_checks
        value = Gauge("canary_metric_analysis", "each metric's last value", ["name", "namespace", "metric"], registry=registry)
        verdict = Gauge("canary_metric_verdict", "1 pass, 0 fail, 0.5 inconclusive, -1 no data or error", ["name", "namespace", "metric"], registry=registry)
        for check in checks:
            if check.value is not None:
                value.labels(**who, metric=check.metric).set(check.value)
            verdict.labels(**who, metric=check.metric).set(VERDICT.get(check.verdict, -1.0))
        failed = Gauge("canary_failed_checks", "failed ticks in a row and in all", ["name", "namespace", "count"], registry=registry)
        failed.labels(**who, count="in_row").set(state.failed_in_row)
        failed.labels(**who, count="total").set(state.failed_total)
        started = _parse(state.started)
        duration = Gauge("canary_duration_seconds", "seconds since the release began", ["name", "namespace"], registry=registry)
        if started is not None:
            updated = _parse(state.updated) or started
            duration.labels(**who).set(max(0.0, (updated - started).total_seconds()))
        failure = self._push(registry)
        if failure is not None:
            self._skip_until = self._clock() + self.backoff
            if not self._failed and self._on_failure is not None:
                # the address's origin only: its path or query may carry a token (the URL may be a Pulumi secret)
                self._on_failure(f"the Pushgateway at {http.origin(self.address)} did not take the release's metrics: {failure}; "
                                 f"pushes are skipped for {self.backoff:g}s after each failure")
            self._failed = True
        else:
            self._skip_until = None

    def _push(self, registry: CollectorRegistry) -> str | None:
        """One push, bounded as a whole (a gateway that trickled its answer held every save for as long as it took);
        what went wrong, or None. Anything it raises is a failed push (a host the IDNA codec refuses raised
        UnicodeError through every save of the release)."""
        outcome = http.within(lambda: push_to_gateway(self.address, job="canary", registry=registry, timeout=self.timeout,
                                                      grouping_key={"stack": self.stack.replace("/", "_"), "app": self.app}),
                              self.timeout, name="canary-push")
        if outcome.late:
            return f"no whole answer within {self.timeout:g}s"
        return outcome.failure or None


def _parse(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
