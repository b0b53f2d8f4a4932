"""The Pushgateway pusher against a recording HTTP server on 127.0.0.1: what a release pushes, and that a
gateway that does not take it never stops the release."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canary.adapters import push
from canary.adapters.push import Pusher
from canary.core.records import Check, Effect, Outcome, Phase, ReleaseState, Tick, Verdict
from tests.unit.support import BOUND_S, Receiver, http_receiver, refused_url, trickling_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gateway() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


def checks() -> tuple[Check, ...]:
    return (
        Check(metric="error-rate", value=0.4, verdict=Verdict.PASS, effect=Effect.PASS, reason="0.4 within max 1"),
        Check(metric="request-duration", value=812.5, verdict=Verdict.FAIL, effect=Effect.FAIL, reason="812.5 above max 500"),
        Check(metric="success-rate", value=None, verdict=Verdict.NO_DATA, effect=Effect.HOLD, reason="no samples"),
        Check(metric="latency-judge", value=1.2, verdict=Verdict.INCONCLUSIVE, effect=Effect.INCONCLUSIVE, reason="marginal"),
    )


def release_state(phase: Phase = Phase.PROGRESSING, **fields: object) -> ReleaseState:
    base: dict[str, object] = {
        "release": "20261202T101500-4711", "stack": "org/shop/prod", "app": "web", "namespace": "shop", "phase": phase,
        "weight": 30, "failed_in_row": 1, "failed_total": 2,
        "started": "2026-12-02T10:15:00.000Z", "updated": "2026-12-02T10:20:30.500Z",
    }
    base.update(fields)
    return ReleaseState.model_validate(base)


def tick(state: ReleaseState) -> Tick:
    return Tick(time=state.updated, release=state.release, outcome=Outcome.FAIL, failed_in_row=1, failed_total=2, threshold=3,
                reason="request-duration above max 500", checks=checks())


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed as Prometheus parses the text exposition format."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def who(**more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"name": "web", "namespace": "shop", **more}.items()))


def test_a_push_puts_every_metric_to_the_apps_group_in_the_text_format(gateway: Receiver) -> None:
    failures: list[str] = []
    state = release_state()
    Pusher(gateway.url, "org/shop/prod", "web", "shop", on_failure=failures.append).push(state, tick(state))
    (request,) = gateway.wait_for(1)
    assert failures == []
    # PUT replaces the app's group; the stack's slashes would split the path: they become underscores
    assert request.method == "PUT"
    assert request.path == "/metrics/job/canary/app/web/stack/org_shop_prod"
    assert request.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(request.body)
    assert {name for name, _ in got} == set(push.NAMES)

    assert got[("canary_status", who())] == 0
    phases = {dict(labels)["phase"]: value for (name, labels), value in got.items() if name == "canary_phase"}
    assert phases == {p.value: (1.0 if p is Phase.PROGRESSING else 0.0) for p in Phase}
    assert all(set(dict(labels)) == {"name", "namespace", "phase"} for name, labels in got if name == "canary_phase")

    assert got[("canary_weight", (("namespace", "shop"), ("workload", "web-stable")))] == 70
    assert got[("canary_weight", (("namespace", "shop"), ("workload", "web-canary")))] == 30

    analysis = {dict(labels)["metric"]: value for (name, labels), value in got.items() if name == "canary_metric_analysis"}
    assert analysis == {"error-rate": 0.4, "request-duration": 812.5, "latency-judge": 1.2}  # no data: no value
    verdicts = {dict(labels)["metric"]: value for (name, labels), value in got.items() if name == "canary_metric_verdict"}
    assert verdicts == {"error-rate": 1.0, "request-duration": 0.0, "success-rate": -1.0, "latency-judge": 0.5}
    assert got[("canary_metric_analysis", who(metric="request-duration"))] == 812.5
    assert got[("canary_metric_verdict", who(metric="request-duration"))] == 0.0

    assert got[("canary_failed_checks", who(count="in_row"))] == 1
    assert got[("canary_failed_checks", who(count="total"))] == 2
    assert got[("canary_duration_seconds", who())] == pytest.approx(330.5)


@pytest.mark.parametrize(("phase", "status"), [
    (Phase.INITIALIZING, 0), (Phase.PROMOTING, 0), (Phase.ROLLING_BACK, 0), (Phase.SUCCEEDED, 1),
    (Phase.FAILED, 2), (Phase.ABORTED, 2), (Phase.PROMOTED_UNVERIFIED, 3),
])
def test_canary_status_follows_flaggers_codes(gateway: Receiver, phase: Phase, status: int) -> None:
    Pusher(gateway.url, "prod", "web", "shop").push(release_state(phase), None)
    got = samples(gateway.wait_for(1)[0].body)
    assert got[("canary_status", who())] == status
    assert got[("canary_phase", who(phase=phase.value))] == 1


def test_without_a_tick_the_states_last_checks_are_pushed(gateway: Receiver) -> None:
    state = release_state(last_checks=checks()[:1])
    Pusher(gateway.url, "prod", "web", "shop").push(state, None)
    got = samples(gateway.wait_for(1)[0].body)
    assert {labels for name, labels in got if name == "canary_metric_verdict"} == {who(metric="error-rate")}
    assert got[("canary_metric_analysis", who(metric="error-rate"))] == 0.4


def test_a_release_not_started_yet_has_no_duration(gateway: Receiver) -> None:
    Pusher(gateway.url, "prod", "web", "shop").push(release_state(started="", updated=""), None)
    got = samples(gateway.wait_for(1)[0].body)
    assert not [key for key in got if key[0] == "canary_duration_seconds"]


@pytest.mark.parametrize("how", ["refused", "500", "hangs"])
def test_a_gateway_that_does_not_take_the_metrics_is_reported_once_and_never_raises(gateway: Receiver, how: str) -> None:
    url = refused_url() if how == "refused" else gateway.url
    gateway.status = 500
    gateway.hang = how == "hangs"
    failures: list[str] = []
    pusher = Pusher(url, "prod", "web", "shop", on_failure=failures.append, timeout=0.5)
    state = release_state()
    started = time.monotonic()
    for _ in range(3):
        pusher.push(state, tick(state))
    assert time.monotonic() - started < 5.0  # each push bounded by the timeout
    assert len(failures) == 1
    assert failures[0].startswith(f"the Pushgateway at {url} did not take the release's metrics")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_after_a_failure_pushes_are_skipped_for_the_back_off_then_tried_again(gateway: Receiver) -> None:
    # a push is synchronous: a blackholed gateway added its timeout to every state save, rollback's included
    gateway.hang = True
    clock = FakeClock()
    failures: list[str] = []
    pusher = Pusher(gateway.url, "prod", "web", "shop", on_failure=failures.append, timeout=0.5, backoff=60.0, clock=clock)
    state = release_state()
    pusher.push(state, None)
    assert len(gateway.wait_for(1)) == 1
    started = time.monotonic()
    for _ in range(5):
        pusher.push(state, tick(state))
    assert time.monotonic() - started < 0.2
    assert len(gateway.requests) == 1
    (failure,) = failures
    assert failure.startswith(f"the Pushgateway at {gateway.url} did not take the release's metrics: "), failure
    assert failure.endswith("; pushes are skipped for 60s after each failure"), failure

    gateway.hang = False
    gateway.release.set()
    clock.now += 60.0
    pusher.push(state, None)
    pusher.push(state, None)  # it answered: pushes go on at every save
    assert len(gateway.wait_for(3)) == 3
    assert len(failures) == 1


def test_an_address_that_does_not_speak_http_is_a_failure_too() -> None:
    """A wrong port (another service answers, not a Pushgateway): http.client's errors are not OSErrors."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(BOUND_S)

        def answer_garbage() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(BOUND_S)
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        failures: list[str] = []
        pusher = Pusher(f"http://127.0.0.1:{server.getsockname()[1]}", "prod", "web", "shop", on_failure=failures.append, timeout=2)
        pusher.push(release_state(), None)
        thread.join(BOUND_S)
    assert len(failures) == 1 and "BadStatusLine" in failures[0]


def test_a_failing_gateway_without_a_failure_callback_is_silent() -> None:
    pusher = Pusher(refused_url(), "prod", "web", "shop")
    started = time.monotonic()
    assert pusher.push(release_state(), None) is None  # no exception, nothing to report to
    assert time.monotonic() - started < BOUND_S


def test_a_host_the_url_codec_refuses_is_a_failed_push_never_an_error_out_of_the_save() -> None:
    """`http://push..example.com:9091` passes the URL rule, and pushing to it raised UnicodeError (IDNA) through
    every state save of the release, the rollback's included."""
    failures: list[str] = []
    pusher = Pusher("http://push..example.com:9091", "prod", "web", "shop", on_failure=failures.append, timeout=0.5)
    pusher.push(release_state(), None)
    assert len(failures) == 1 and "UnicodeError" in failures[0], failures


def test_a_failed_push_names_the_gateway_s_origin_only() -> None:
    """The Pushgateway's URL may be a Pulumi secret: its path and query (a tenant token) reached the journal."""
    failures: list[str] = []
    secret = refused_url() + "/tenant/s3cr3t-tok?token=abcd1234"
    Pusher(secret, "prod", "web", "shop", on_failure=failures.append, timeout=0.5).push(release_state(), None)
    assert len(failures) == 1 and "s3cr3t" not in failures[0] and "abcd1234" not in failures[0], failures
    assert refused_url().rsplit(":", 1)[0] in failures[0]


def test_a_gateway_that_trickles_its_answer_costs_a_save_its_timeout_once() -> None:
    """The client's timeout bounds each read: an answer sent a byte at a time held each save as long as it took (9 s
    in the review's run) and was never a failure, so the back-off never began."""
    failures: list[str] = []
    with trickling_server(5.0) as url:
        pusher = Pusher(url, "prod", "web", "shop", on_failure=failures.append, timeout=1)
        began = time.monotonic()
        pusher.push(release_state(), None)
        took = time.monotonic() - began
    assert took < 3.5, took  # its timeout and a second's grace, not the 5 s the answer takes
    assert len(failures) == 1 and "no whole answer within 1s" in failures[0], failures
