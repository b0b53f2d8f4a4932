"""Strategies proven with real HTTP through the lab's gateway (issue 17): A/B testing, blue/green, session
affinity, and a person steering a release (pause, continue, promote --skip-analysis).

Each test releases on a stack of its own, through the CLI as a user would, and sends bounded real
requests through Traefik while the release runs, counting the answers by ``X-Version`` (``v1`` is
stable, ``v2`` and ``v2-faulty`` the new versions). Mirroring cannot be proven here: Traefik has no
``RequestMirror`` (docs/LAB.md, "What the lab's gateway cannot do"); tests/unit/test_routing.py holds
the route the product declares for it.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
import requests

from canary.core.naming import Track
from canary.core.routing import RouteState
from tests.lab.helpers import Background, LabStack, RouteWatcher, assert_stable_state, drive, host, running, wait_until

#: a release takes about a minute; a disruptive test elsewhere may hold the lab for minutes before it starts
pytestmark = pytest.mark.timeout(600)

HEADER = "X-Canary"


def _iterations(config: dict[str, Any], strategy: str, header_value: str | None, iterations: int = 3) -> None:
    """The lab's analysis with ``iterations`` instead of weights; the rollout hook (hey) sends ``X-Canary:
    header_value`` when given, and the match sends that header to the canary."""
    analysis = config["canary:analysis"]
    for key in ("stepWeight", "maxWeight", "stepWeights"):
        analysis.pop(key, None)
    analysis.update(strategy=strategy, iterations=iterations)
    if header_value is not None:
        analysis["match"] = [{"headers": {HEADER: {"exact": header_value}}}]
        hook = analysis["webhooks"][0]
        hook["cmd"] = hook["cmd"].replace("hey ", f"hey -H '{HEADER}: {header_value}' ", 1)


def _ab(config: dict[str, Any]) -> None:
    _iterations(config, "ab", "always")


def _blue_green(config: dict[str, Any]) -> None:
    _iterations(config, "blueGreen", "tester")  # only the tester (the load test) sends the header


def _blue_green_without_testers(config: dict[str, Any]) -> None:
    _iterations(config, "blueGreen", None)


def _affinity(config: dict[str, Any]) -> None:
    config["canary:analysis"]["sessionAffinity"] = {"cookieName": "canary-affinity", "maxAge": "1h"}


def _url(lab_stack: LabStack) -> str:
    return f"{lab_stack.layout.gateway_url}/"


def _sample(lab_stack: LabStack, count: int, **kwargs: Any) -> dict[str, int]:
    return drive(_url(lab_stack), count, host_name=host(lab_stack.name), seconds=60, **kwargs)


def _route_with(lab_stack: LabStack, rules: int) -> Any:
    """A condition: the cluster's route has ``rules`` match rules before its default one, accepted."""
    spec = lab_stack.spec()

    def check() -> RouteState | None:
        route = lab_stack.reader.route(spec)
        return route if route is not None and route.accepted and route.matched_rules == rules else None

    return check


def _served(lab_stack: LabStack, version: str, headers: dict[str, str] | None = None, seconds: float = 15) -> None:
    """Wait (bounded: one request every 50 ms for ``seconds``) until the gateway answers these requests
    with ``version``: its status comes before its data plane follows, by more under load (docs/LAB.md)."""
    session = requests.Session()
    session.headers.update({"Host": host(lab_stack.name), **(headers or {})})
    wait_until(lambda: session.get(_url(lab_stack), timeout=10).headers.get("X-Version") == version, f"{version} answering {headers or 'plain requests'}", seconds, every=0.05)


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class UserSampler(Background):
    """One user sending requests through the gateway one after another, in the background: each answer's
    wall time, version (or error) and the ``Set-Cookie`` it carried. Bounded: at most ``limit`` requests
    and ``seconds`` in all, and it stops when told."""

    join_seconds = 15.0

    def __init__(self, lab_stack: LabStack, headers: dict[str, str] | None = None, every: float = 0.05, limit: int = 6000, seconds: float = 400) -> None:
        super().__init__()
        self.url = _url(lab_stack)
        self.session = requests.Session()
        self.session.headers["Host"] = host(lab_stack.name)
        self.session.headers.update(headers or {})
        self.every, self.limit, self.seconds = every, limit, seconds
        self.answers: list[tuple[float, str]] = []

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and len(self.answers) < self.limit and time.monotonic() < deadline:
            try:
                response = self.session.get(self.url, timeout=10)
                answer = response.headers.get("X-Version", f"status-{response.status_code}")
                if response.status_code >= 500:
                    answer = f"{answer}/status-{response.status_code}"
            except requests.RequestException as exc:
                answer = type(exc).__name__
            self.answers.append((time.time(), answer))
            self._stop.wait(self.every)

    def versions(self, after: float = 0.0, before: float = float("inf")) -> dict[str, int]:
        counts: dict[str, int] = {}
        for at, answer in self.answers:
            if after <= at < before:
                counts[answer] = counts.get(answer, 0) + 1
        return counts


# --- A/B testing --------------------------------------------------------------------------------


@pytest.mark.parametrize("lab_stack", [_ab], indirect=True)
def test_ab_sends_matched_requests_to_the_canary_and_promotes_it_after_its_iterations(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        with running(process):
            wait_until(_route_with(lab_stack, 1), "the A/B match rule in the route", 180, process)
            _served(lab_stack, "v2", {HEADER: "always"})
            matched = _sample(lab_stack, 60, headers={HEADER: "always"})
            others = _sample(lab_stack, 60)
            assert matched == {"v2": 60}, matched
            assert others == {"v1": 60}, others
            state = lab_stack.state()
            assert state is not None and state.phase.value == "Progressing", state  # sampled during the analysis
            out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert "Succeeded" in out and "promoted demo:v2" in out
    assert set(watcher.seen) == {(100, 0)}, watcher.seen  # no weighted share: users never got the canary by chance
    ticks = lab_stack.of("tick")
    # a failed hook's whole record (its exit status and output tail; a tick's reason cuts it short) says why it failed
    failed_hooks = [(w.name, w.seconds, w.detail) for w in lab_stack.of("webhook") if not w.ok]
    assert [t.outcome.value for t in ticks if t.outcome.value != "hold"] == ["advance"] * 3, ([(t.outcome.value, t.reason) for t in ticks], failed_hooks)
    assert_stable_state(lab_stack, "demo:v2")
    assert _sample(lab_stack, 30, headers={HEADER: "always"}) == {"v2": 30}
    assert _sample(lab_stack, 30) == {"v2": 30}


@pytest.mark.parametrize("lab_stack", [_ab], indirect=True)
def test_ab_rolls_a_faulty_canary_back_and_every_request_reaches_stable_afterwards(lab_stack: LabStack) -> None:
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2-faulty")
    with running(process):
        wait_until(_route_with(lab_stack, 1), "the A/B match rule in the route", 180, process)
        _served(lab_stack, "v2-faulty", {HEADER: "always"})
        matched = _sample(lab_stack, 60, headers={HEADER: "always"})
        others = _sample(lab_stack, 60)
        assert set(matched) == {"v2-faulty"}, matched  # its 500s carry its version too
        assert others == {"v1": 60}, others
        out, err = process.communicate(timeout=600)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    ticks = lab_stack.of("tick")
    assert ticks[-1].outcome.value == "rollback" and not any(t.outcome.value == "advance" for t in ticks), [(t.outcome.value, t.reason) for t in ticks]
    error_rate = next(c for c in ticks[-1].checks if c.metric == "error-rate")
    assert error_rate.verdict.value == "fail" and error_rate.value is not None and error_rate.value > 5, error_rate
    assert_stable_state(lab_stack, "demo:v1")
    assert _sample(lab_stack, 40, headers={HEADER: "always"}) == {"v1": 40}
    assert _sample(lab_stack, 40) == {"v1": 40}


# --- blue/green ---------------------------------------------------------------------------------


def _switch_time(lab_stack: LabStack) -> float:
    (switch,) = [r for r in lab_stack.of("decision") if r.message.startswith("blue/green: all traffic switches")]
    return _time(switch.time)


@pytest.mark.parametrize("lab_stack", [_blue_green], indirect=True)
def test_blue_green_keeps_users_on_blue_until_the_switch_then_all_reach_green(lab_stack: LabStack) -> None:
    """Only the tester's requests (the rollout hook's, with the tester header) reach green during the
    analysis; users reach it only once the release switches, and then all of them do."""
    _served(lab_stack, "v1")  # the new route's status comes before Traefik serves it: users sample from then on
    with UserSampler(lab_stack) as users:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        with running(process):
            wait_until(_route_with(lab_stack, 1), "the tester's match rule in the route", 180, process)
            _served(lab_stack, "v2", {HEADER: "tester"})
            assert _sample(lab_stack, 40, headers={HEADER: "tester"}) == {"v2": 40}
            state = lab_stack.state()
            assert state is not None and state.phase.value == "Progressing" and state.weight == 0, state
            canary = lab_stack.deployment(Track.CANARY)
            assert canary["ready"] == 2, canary  # green runs at full size before it takes any user
            out, err = process.communicate(timeout=600)
        time.sleep(1)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    switch = _switch_time(lab_stack)
    before, after = users.versions(before=switch), users.versions(after=switch)
    assert set(before) == {"v1"} and before["v1"] >= 100, before  # the whole analysis: no user reached green
    answers = [answer for _, answer in users.answers]
    first_green = answers.index("v2")
    assert set(answers[:first_green]) == {"v1"} and set(answers[first_green:]) == {"v2"}, after  # one switch, never back
    assert len(answers) - first_green >= 10, after
    ticks = lab_stack.of("tick")
    # the iterations, then one at the switch: green judged under all traffic before stable takes it (Flagger's order)
    judged = [t for t in ticks if t.outcome.value != "hold"]
    assert [(t.outcome.value, t.weight) for t in judged] == [("advance", 0)] * 3 + [("advance", 100)], [(t.outcome.value, t.reason) for t in ticks]
    passed = [c for c in judged[-2].checks if c.metric == "error-rate"]
    assert passed and passed[0].requests is not None and passed[0].requests >= 20, passed  # judged on the tester's requests
    at_switch = [c for c in judged[-1].checks if c.metric == "error-rate"]
    assert at_switch and at_switch[0].requests is not None and at_switch[0].requests >= 20, at_switch  # and on the users'
    assert _time(judged[-1].time) > switch
    assert_stable_state(lab_stack, "demo:v2")
    assert _sample(lab_stack, 40) == {"v2": 40}


@pytest.mark.parametrize("lab_stack", [_blue_green], indirect=True)
def test_blue_green_never_sends_users_to_a_faulty_green_and_rolls_it_back(lab_stack: LabStack) -> None:
    _served(lab_stack, "v1")  # the new route's status comes before Traefik serves it: users sample from then on
    with UserSampler(lab_stack) as users:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2-faulty")
        with running(process):
            wait_until(_route_with(lab_stack, 1), "the tester's match rule in the route", 180, process)
            _served(lab_stack, "v2-faulty", {HEADER: "tester"})
            assert set(_sample(lab_stack, 40, headers={HEADER: "tester"})) == {"v2-faulty"}
            out, err = process.communicate(timeout=600)
        time.sleep(1)
    assert process.returncode == 1, out[-3000:] + err[-3000:]
    seen = users.versions()
    assert set(seen) == {"v1"} and seen["v1"] >= 100, seen  # not one user request reached green, none failed
    assert not [r for r in lab_stack.of("decision") if r.message.startswith("blue/green: all traffic switches")]
    ticks = lab_stack.of("tick")
    assert ticks[-1].outcome.value == "rollback", [(t.outcome.value, t.reason) for t in ticks]
    error_rate = next(c for c in ticks[-1].checks if c.metric == "error-rate")
    assert error_rate.verdict.value == "fail" and error_rate.value is not None and error_rate.value > 5, error_rate
    assert_stable_state(lab_stack, "demo:v1")
    assert _sample(lab_stack, 40, headers={HEADER: "tester"}) == {"v1": 40}


@pytest.mark.parametrize("lab_stack", [_blue_green_without_testers], indirect=True)
def test_blue_green_without_tester_traffic_is_never_promoted_on_no_data(lab_stack: LabStack) -> None:
    """No match and a load test through the gateway: green gets no request at all, so its checks have no
    data — which never passes. The release rolls back, saying why, and no user ever reached green."""
    _served(lab_stack, "v1")  # the new route's status comes before Traefik serves it: users sample from then on
    with UserSampler(lab_stack) as users:
        done = lab_stack.release("demo:v2")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    seen = users.versions()
    assert set(seen) == {"v1"}, seen
    ticks = lab_stack.of("tick")
    assert ticks and not any(t.outcome.value == "advance" for t in ticks), [(t.outcome.value, t.reason) for t in ticks]
    assert ticks[-1].outcome.value == "rollback"
    assert ticks[-1].checks and all(c.verdict.value == "no-data" for c in ticks[-1].checks), ticks[-1].checks
    assert_stable_state(lab_stack, "demo:v1")
    state = lab_stack.state()
    assert state is not None and "no data" in state.reason, state.reason


# --- session affinity ---------------------------------------------------------------------------


@pytest.mark.parametrize("lab_stack", [_affinity], indirect=True)
def test_session_affinity_keeps_a_client_on_the_canary_and_others_get_the_weighted_mix(lab_stack: LabStack) -> None:
    process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
    spec = lab_stack.spec()
    with running(process):
        def at_weight() -> RouteState | None:
            route = lab_stack.reader.route(spec)
            return route if route is not None and route.accepted and route.matched_rules == 1 and 20 <= (route.canary_weight or 0) < 100 else None

        wait_until(at_weight, "weight 20 with the affinity cookie's rule", 180, process)
        time.sleep(0.5)
        client = requests.Session()
        client.headers["Host"] = host(lab_stack.name)
        answers = []
        for _ in range(200):  # bounded: at weight 20 or more, the canary answers one in five
            response = client.get(_url(lab_stack), timeout=10)
            answers.append((response.headers["X-Version"], response.headers.get("Set-Cookie", "")))
            if response.headers["X-Version"] == "v2":
                break
        version, cookie = answers[-1]
        assert version == "v2", answers
        # the cookie comes with the canary's answers only (a filter on the canary's backend)
        assert cookie.startswith("canary-affinity=") and "Max-Age=3600" in cookie, answers[-1]
        assert all(v == "v1" and "canary-affinity" not in c for v, c in answers[:-1]), answers
        assert client.cookies.get("canary-affinity"), client.cookies
        stuck = [client.get(_url(lab_stack), timeout=10).headers["X-Version"] for _ in range(100)]
        mixed = _sample(lab_stack, 100)
        route = lab_stack.reader.route(spec)
        assert route is not None and 0 < (route.canary_weight or 0) < 100, route  # still weighted while sampled
        assert stuck == ["v2"] * 100, stuck
        assert mixed.get("v1", 0) > 0 and mixed.get("v2", 0) > 0 and set(mixed) == {"v1", "v2"}, mixed
        out, err = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    assert_stable_state(lab_stack, "demo:v2")
    # the release is over: the next answer expires the cookie, and the client stops sending it
    ended = client.get(_url(lab_stack), timeout=10)
    assert ended.headers["X-Version"] == "v2" and "canary-affinity=;" in ended.headers.get("Set-Cookie", ""), ended.headers
    assert not client.cookies.get("canary-affinity"), client.cookies


# --- mirroring: what the lab's Traefik cannot do --------------------------------------------------


def _mirror(config: dict[str, Any]) -> None:
    config["canary:analysis"].update(mirror=True, mirrorWeight=50)


@pytest.mark.parametrize("lab_stack", [_mirror], indirect=True)
def test_mirroring_is_refused_on_the_labs_traefik_before_anything_changes(lab_stack: LabStack) -> None:
    """Traefik has no RequestMirror (docs/LAB.md): the release refuses to start rather than serve every user
    500. Then the why, on the lab itself: the mirror filter put into the route by hand is Accepted, and
    every request of the rule is answered 500."""
    refused = lab_stack.release("demo:v2")
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert ("analysis.mirror: must be off on this gateway: gateway default/lab (traefik.io/gateway-controller) does not support HTTPRouteRequestMirror "
            "(not in its GatewayClass's supportedFeatures)") in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert_stable_state(lab_stack, "demo:v1")
    assert lab_stack.deployment(Track.CANARY)["replicas"] == 0
    assert _sample(lab_stack, 20) == {"v1": 20}

    spec = lab_stack.spec()
    route = lab_stack.kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", "web", lab_stack.namespace)
    assert route is not None
    mirrored = {**route, "spec": {**route["spec"], "rules": [{**route["spec"]["rules"][-1], "filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "web-canary", "port": 80}, "percent": 50}}]}]}}
    generation = lab_stack.kube.replace(mirrored)["metadata"]["generation"]
    wait_until(lambda: (r := lab_stack.reader.route(spec)) is not None and r.mirrored and r.accepted and r.generation == generation,
               "the mirrored route accepted", 30)
    probe = requests.Session()
    probe.headers["Host"] = host(lab_stack.name)
    wait_until(lambda: probe.get(_url(lab_stack), timeout=10).status_code == 500, "Traefik serving the mirrored rule", 15)
    assert _sample(lab_stack, 20) == {"status-500": 20}  # stable answers nothing: Traefik's "invalid-httproute-filter" does
    restored = lab_stack.kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", "web", lab_stack.namespace)
    assert restored is not None
    lab_stack.kube.replace({**restored, "spec": route["spec"]})
    wait_until(lambda: (r := lab_stack.reader.route(spec)) is not None and not r.mirrored and r.accepted, "the route at rest again", 30)


# --- a person steering ----------------------------------------------------------------------------


def _many_slow_steps(config: dict[str, Any]) -> None:
    """Steps of 10 up to 90, every 10 s: after `continue` the schedule's last step is a minute away or more,
    room for the `promote` command to land before it on a loaded machine (with 5 s steps up to 50, it once
    did not)."""
    config["canary:analysis"].update(interval="10s", maxWeight=90)


@pytest.mark.long
@pytest.mark.parametrize("lab_stack", [_many_slow_steps], indirect=True)
def test_pause_holds_the_weight_while_ticks_go_on_continue_resumes_and_skip_analysis_promotes_at_once(lab_stack: LabStack) -> None:
    with RouteWatcher(lab_stack) as watcher:
        process = lab_stack.start("release", lab_stack.name, "--image", "demo:v2")
        with running(process):
            wait_until(lambda: (lab_stack.state() or _NONE).weight >= 10, "weight 10", 180, process)
            paused = lab_stack.cli("pause", lab_stack.name)
            assert paused.returncode == 0 and "pause requested for release" in paused.stdout, paused.stdout + paused.stderr
            state = wait_until(lambda: (s := lab_stack.state()) is not None and s.paused and s.shifting_to is None and s, "the pause taken", 60, process)
            held, ticks_before = state.weight, len(lab_stack.of("tick"))
            status = lab_stack.cli("status", lab_stack.name)
            assert f"at weight {held} — PAUSED" in status.stdout, status.stdout
            wait_until(lambda: len(lab_stack.of("tick")) >= ticks_before + 4, "four ticks while paused", 120, process, every=1)
            state = lab_stack.state()
            assert state is not None and state.paused and state.weight == held, state
            assert watcher.canary_weights[-1] == held
            continued = lab_stack.cli("continue", lab_stack.name)
            assert continued.returncode == 0, continued.stdout + continued.stderr
            wait_until(lambda: (lab_stack.state() or _NONE).weight > held, f"a step past weight {held}", 120, process)
            promoted = lab_stack.cli("promote", lab_stack.name, "--skip-analysis", "--reason", "hotfix for incident 42")
            assert promoted.returncode == 0, promoted.stdout + promoted.stderr
            asked = time.monotonic()
            out, err = process.communicate(timeout=300)
            took = time.monotonic() - asked
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    held_ticks = [t for t in lab_stack.of("tick") if t.weight == held]
    assert len(held_ticks) >= 4, held_ticks
    shown = [w for w in watcher.canary_weights if w]
    assert shown == sorted(shown) and max(shown) < 90, watcher.seen  # promoted before the schedule's last step
    assert took < 60, f"promote --skip-analysis took {took:.1f}s to end the release"
    assert_stable_state(lab_stack, "demo:v2")
    requests_made = [(r.request, r.reason) for r in lab_stack.of("request")]
    assert ("pause", "") in requests_made and ("continue", "") in requests_made, requests_made
    assert ("promote --skip-analysis", "hotfix for incident 42") in requests_made, requests_made
    status = lab_stack.cli("status", lab_stack.name)
    assert "Succeeded" in status.stdout and "promoted without a passing analysis: skip-analysis: hotfix for incident 42" in status.stdout, status.stdout
    history = lab_stack.cli("history", lab_stack.name)
    assert "request promote --skip-analysis by" in history.stdout and "hotfix for incident 42" in history.stdout, history.stdout[-3000:]


class _None:
    weight = -1


_NONE = _None()
