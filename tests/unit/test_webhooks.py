"""Webhooks and alerts for real: the ``Caller`` (HTTP POSTs to a server on 127.0.0.1, local commands in
their own process group) and the ``Delivery`` queue that informs event hooks and alerts off the release's thread."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from canary.adapters import http
from canary.adapters.webhooks import Caller
from canary.core import notify
from canary.core.records import HookResult, Phase, ReleaseState, TrackPin
from canary.core.spec import Alert, ReleaseSpec, Severity, Webhook, WebhookType
from canary.release.hooks import Delivery, event_payload, flagger_phase, payload
from tests.unit.support import BOUND_S, Receiver, group_members, http_receiver, poll, refused_url, trickling_server

pytestmark = pytest.mark.timeout(60)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


def hook(**fields: Any) -> Webhook:
    return Webhook.model_validate({"name": "x", "type": "rollout", "timeout": "5s", **fields})


def spec() -> ReleaseSpec:
    return ReleaseSpec.model_validate({
        "app": {"name": "web", "namespace": "shop", "image": "registry.example.com/shop/web:1.0.0"},
        "gateway": {"parentRefs": [{"name": "public"}]},
        "analysis": {"stepWeight": 10, "maxWeight": 50},
    })


def state() -> ReleaseState:
    return ReleaseState(
        release="20261202T101500-4711", stack="prod", app="web", namespace="shop", phase=Phase.PROGRESSING, weight=20,
        stable=TrackPin(template={}, hash="aaaa", image="registry.example.com/shop/web:1.0.0"),
        canary=TrackPin(template={}, hash="bbbb", image="registry.example.com/shop/web:2.0.0"),
    )


def wait_for_pid(path: Path) -> int:
    assert poll(lambda: path.exists() and path.read_text().strip().isdigit()), f"the command did not write {path}"
    return int(path.read_text())


# --- HTTP hooks -----------------------------------------------------------------------------------


def test_an_http_hook_posts_the_flagger_payload_and_a_200_is_a_success(receiver: Receiver) -> None:
    gate = hook(name="load-test", type="confirm-promotion", url=receiver.url + "/gate", metadata={"cmd": "hey"})
    result = Caller().call(gate, payload(gate, spec(), state()))
    assert result.ok, result
    assert (result.name, result.type) == ("load-test", "confirm-promotion")
    assert result.detail == f"load-test: POST {receiver.url} answered 200"  # the origin only: a path may carry a token
    (request,) = receiver.wait_for(1)
    assert (request.method, request.path) == ("POST", "/gate")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "name": "web", "namespace": "shop", "phase": "Progressing", "releasePhase": "Progressing", "weight": 20,
        "release": "20261202T101500-4711", "type": "confirm-promotion", "metadata": {"cmd": "hey"}, "checksum": "bbbb",
        "canaryImage": "registry.example.com/shop/web:2.0.0", "stableImage": "registry.example.com/shop/web:1.0.0",
    }


@pytest.mark.parametrize("status", [200, 201, 202])
def test_200_to_202_is_a_yes_as_in_flagger(receiver: Receiver, status: int) -> None:
    receiver.status = status
    assert Caller().call(hook(url=receiver.url), {}).ok


@pytest.mark.parametrize("status", [203, 204, 206])
def test_another_2xx_is_a_no_saying_why(receiver: Receiver, status: int) -> None:
    # Flagger fails a hook that answers above 202: a gate canary opens must be one Flagger would open
    receiver.status = status
    result = Caller().call(hook(url=receiver.url), {})
    assert not result.ok
    assert f"answered {status}" in result.detail and "only 200, 201 and 202" in result.detail, result.detail


@pytest.mark.parametrize("status", [500, 404, 302])
def test_a_non_2xx_answer_is_a_failure_naming_the_status(receiver: Receiver, status: int) -> None:
    receiver.status = status
    result = Caller().call(hook(url=receiver.url), {"a": 1})
    assert not result.ok
    assert f"answered {status}" in result.detail


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_gate_answering_a_redirect_says_no_and_the_redirect_is_not_followed(receiver: Receiver, status: int) -> None:
    # followed, a 302 to a login page that answers 200 opened the gate
    receiver.answers["/gate"] = (status, {"Location": "/login?session=s3cr3t"})
    gate = hook(type="confirm-promotion", url=receiver.url + "/gate")
    result = Caller().call(gate, payload(gate, spec(), state()))
    assert not result.ok
    assert [r.path for r in receiver.requests] == ["/gate"]
    assert f"answered {status}, a redirect to 127.0.0.1:{receiver.port}" in result.detail, result.detail
    assert "s3cr3t" not in result.detail and "/login" not in result.detail


def test_a_redirect_to_another_host_never_gets_the_body(receiver: Receiver) -> None:
    # a 307 or 308 re-POSTs the body (metadata, tokens) where the redirect says
    with http_receiver() as elsewhere:
        receiver.answers["/gate"] = (307, {"Location": f"http://user:pw@127.0.0.1:{elsewhere.port}/steal?token=s3cr3t"})
        result = Caller().call(hook(url=receiver.url + "/gate", metadata={"token": "s3cr3t"}), {"metadata": {"token": "s3cr3t"}})
        assert not result.ok
        assert elsewhere.requests == []
    assert f"a redirect to 127.0.0.1:{elsewhere.port}, not followed" in result.detail, result.detail
    assert "s3cr3t" not in result.detail and "pw" not in result.detail and "steal" not in result.detail


def test_a_receiver_that_never_answers_is_cut_at_the_hooks_timeout(receiver: Receiver) -> None:
    receiver.hang = True
    started = time.monotonic()
    result = Caller().call(hook(url=receiver.url, timeout="1s"), {})
    took = time.monotonic() - started
    assert receiver.arrived.is_set()  # the request was taken, and no answer came
    assert not result.ok
    assert "timed out after 1s" in result.detail
    assert 0.9 <= took < 3.0, took
    assert 0.9 <= result.seconds < 3.0


def test_a_receiver_that_trickles_its_answer_past_the_timeout_is_reported_timed_out_not_cancelled() -> None:
    # each read gets a byte well within the 1 s timeout, so the client's own timeout never fires: the
    # call is cut at its bound, and the result says so (it once said "the release was cancelled")
    with trickling_server(4.0) as url:
        started = time.monotonic()
        result = Caller().call(hook(url=url, timeout="1s"), {}, threading.Event())
        took = time.monotonic() - started
    assert not result.ok
    assert "timed out after 1s" in result.detail and "cancelled" not in result.detail, result.detail
    assert 1.9 <= took < 3.5, took


def test_a_refused_connection_is_a_failure_not_an_exception() -> None:
    url = refused_url()
    result = Caller().call(hook(url=url), {})
    assert not result.ok
    assert result.detail == f"x: POST {url} failed: ConnectionError"


def test_a_bounded_call_keeps_what_it_returned_or_the_name_of_what_it_raised_never_the_exception() -> None:
    # a kept exception's traceback holds the call's frames, its socket among them, until a later collection
    assert http.within(lambda: 7, 1.0) == http.Outcome(value=7)

    def raises() -> None:
        raise ValueError("https://user:TOKEN@host/")

    outcome = http.within(raises, 1.0)
    assert outcome == http.Outcome(failure="ValueError")
    assert not any(isinstance(v, BaseException) for v in vars(outcome).values())


def test_a_bounded_call_is_abandoned_at_its_bound_or_as_soon_as_it_is_cancelled() -> None:
    release = threading.Event()
    try:
        started = time.monotonic()
        assert http.within(lambda: release.wait(10), 0.2) == http.Outcome(late=True)
        assert 1.1 <= time.monotonic() - started < 3.0  # the bound and a second's grace
        cancel = threading.Event()
        threading.Timer(0.2, cancel.set).start()
        started = time.monotonic()
        assert http.within(lambda: release.wait(10), 5.0, cancel) == http.Outcome(cancelled=True)
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


# a URL with a token in each place one is put: its user, its path (Slack-style), its query, its fragment
URL_SECRETS = ("hook-user-tok", "T0-path-token", "S3CRET-TOKEN", "frag-secret")


def tokened(origin: str) -> str:
    return f"{origin.replace('://', '://hook-user-tok@')}/hooks/T0-path-token/approve?token=S3CRET-TOKEN&team=shop#frag-secret"


@pytest.mark.parametrize("how", ["500", "refused", "hangs", "cancelled"])
def test_an_http_hooks_result_names_it_and_its_origin_never_its_tokens(receiver: Receiver, how: str) -> None:
    # the result's detail goes to the journal, `canary status`, Kubernetes Events, event hooks and chat alerts:
    # it once quoted the whole URL, a confirm-promotion gate's ?token= with it
    origin = refused_url() if how == "refused" else receiver.url
    receiver.status = 500
    receiver.hang = how in ("hangs", "cancelled")
    cancel = threading.Event()
    if how == "cancelled":
        threading.Timer(0.3, cancel.set).start()
    gate = hook(name="gate", type="confirm-promotion", url=tokened(origin), timeout="1s")
    result = Caller().call(gate, payload(gate, spec(), state()), cancel)
    assert not result.ok
    assert result.detail.startswith(f"gate: POST {origin} "), result.detail
    assert not [s for s in URL_SECRETS if s in result.detail], result.detail
    if how == "500":
        assert result.detail == f"gate: POST {origin} answered 500"
        (request,) = receiver.wait_for(1)
        assert request.path == "/hooks/T0-path-token/approve?token=S3CRET-TOKEN&team=shop"  # sent as configured


@pytest.mark.parametrize("quoted", [
    "failed: URLError(<urlopen error [Errno 111] Connection refused: {url}>)",
    "failed: HTTPError('{url}', 500)",
    "failed: InvalidURL: nonnumeric port in {decoded}",
    "failed: auth {user} for {path}?{query}",
])
def test_no_error_text_that_quotes_the_url_reaches_an_http_hooks_result(monkeypatch: pytest.MonkeyPatch, quoted: str) -> None:
    # whatever the HTTP client says, quoting the URL (raw or decoded) or a part of it, is scrubbed of it; a
    # password too (the config refuses one in a hook's URL: scrubbed all the same)
    url = "https://hook-user-tok:hunter2%2Fpass@hooks.example.com:8443/hooks/T0-path-token/approve?token=S3CRET-TOKEN#frag-secret"
    text = quoted.format(url=url, decoded=url.replace("%2F", "/"), user="hook-user-tok:hunter2/pass", path="/hooks/T0-path-token/approve",
                         query="token=S3CRET-TOKEN")
    monkeypatch.setattr("canary.adapters.webhooks.http.post_json", lambda *_, **__: http.Answer(0, text))
    result = Caller().call(hook(name="gate", url="https://hooks.example.com").model_copy(update={"url": url}), {})
    assert not result.ok
    assert result.detail.startswith("gate: POST https://hooks.example.com:8443 failed: "), result.detail
    assert not [s for s in (*URL_SECRETS, "hunter2") if s in result.detail], result.detail


def test_an_http_call_that_dies_of_a_base_exception_is_reported_as_what_it_was_not_as_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # the call runs on a helper thread; something that is not an Exception (a library calling sys.exit)
    # once left nothing behind, and the result said the POST had timed out
    def exits(*_: Any, **__: Any) -> Any:
        raise SystemExit(3)

    monkeypatch.setattr("canary.adapters.webhooks.http.post_json", exits)
    result = Caller().call(hook(url="http://127.0.0.1:9/", timeout="5s"), {})
    assert not result.ok
    assert "failed: SystemExit" in result.detail and "timed out" not in result.detail, result.detail


def test_a_cancel_abandons_a_hanging_http_call_at_once(receiver: Receiver) -> None:
    receiver.hang = True
    cancel = threading.Event()
    results: list[HookResult] = []
    worker = threading.Thread(target=lambda: results.append(Caller().call(hook(url=receiver.url, timeout="30s"), {}, cancel)), daemon=True)
    worker.start()
    assert receiver.arrived.wait(BOUND_S)
    cancel.set()
    cancelled = time.monotonic()
    worker.join(BOUND_S)
    # within the second an abort is promised in (the call polls its cancel every 0.05 s; a loaded machine
    # may be slow to schedule it): one that waited for its 30 s timeout fails this
    assert time.monotonic() - cancelled < 1.0
    assert not results[0].ok and "abandoned" in results[0].detail


# --- command hooks --------------------------------------------------------------------------------


def test_a_command_that_exits_0_succeeds_and_sees_its_name_and_type_in_the_environment() -> None:
    result = Caller().call(hook(name="smoke", cmd="""sh -c 'test "$CANARY_WEBHOOK" = smoke && test "$CANARY_WEBHOOK_TYPE" = rollout'"""), {})
    assert result.ok, result
    assert result.detail.endswith("exited 0")


def test_a_command_that_fails_reports_its_status_and_the_tail_of_its_output() -> None:
    result = Caller().call(hook(cmd="sh -c 'echo one; echo two; echo three >&2; echo four; exit 3'"), {})
    assert not result.ok
    assert "exited 3" in result.detail
    # the last three lines, stderr included, in order; the first is cut
    assert result.detail.endswith("exited 3: two | three | four")


def test_a_command_inherits_no_secret_and_a_secret_it_prints_never_reaches_the_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "hunter2-passphrase")
    monkeypatch.setenv("CANARY_PROMETHEUS_TOKEN", "tok-123456")
    monkeypatch.setenv("PULUMI_ACCESS_TOKEN", "pul-abcdef")
    leaky = Caller().call(hook(cmd="""sh -c 'echo "[$PULUMI_CONFIG_PASSPHRASE][$CANARY_PROMETHEUS_TOKEN][$PULUMI_ACCESS_TOKEN]"; exit 1'"""), {})
    assert leaky.detail.endswith("exited 1: [][][]"), leaky.detail
    (tmp_path / "found").write_text("the passphrase is hunter2-passphrase\n")  # a hook may read it elsewhere
    knows = Caller().call(hook(cmd=f"sh -c 'cat {tmp_path / 'found'}; exit 1'"), {})
    assert "hunter2" not in knows.detail and knows.detail.endswith("the passphrase is ***"), knows.detail


def test_a_command_that_cannot_start_is_a_failure() -> None:
    missing = Caller().call(hook(cmd="/nonexistent/load-tester --go"), {})
    assert not missing.ok and "could not start" in missing.detail
    # one that cannot even be split is refused with the config, before any release (test_spec); built
    # around that rule, it is still a failure of its call, not an exception out of the release
    unbalanced = Caller().call(hook(cmd="true").model_copy(update={"cmd": "sh -c 'echo"}), {})
    assert not unbalanced.ok and "could not start" in unbalanced.detail


def test_a_command_hooks_result_names_its_program_never_its_arguments(tmp_path: Path) -> None:
    # an argument may be a token (`load-tester --token …`), and it was quoted in every result; what the command
    # prints of it is masked too
    secret = "tok-S3CRET-ARG"
    failed = Caller().call(hook(name="gate", cmd=f"""/bin/sh -c 'echo "called with $0"; exit 2' {secret}"""), {})
    assert not failed.ok
    assert failed.detail == "gate: `sh …` exited 2: called with ***", failed.detail
    timed_out = Caller().call(hook(name="gate", cmd=f"sh -c 'sleep 30' {secret}", timeout="1s"), {})
    assert timed_out.detail == "gate: `sh …` timed out after 1s and was killed", timed_out.detail
    missing = Caller().call(hook(name="gate", cmd=f"{tmp_path}/tok-dir-secret/load-tester --token={secret}"), {})
    assert not missing.ok and missing.detail.startswith("gate: `load-tester …` could not start: "), missing.detail
    assert "load-tester" in missing.detail.removeprefix("gate: `load-tester …`"), missing.detail  # which program, from the error too
    assert not [s for s in (secret, "tok-dir-secret", str(tmp_path)) if s in missing.detail], missing.detail


def test_a_command_hooks_output_keeps_the_plain_words_of_its_command_line_and_masks_its_tokens() -> None:
    # every argument of four characters or more was taken for a secret: a rollout check's failure read
    # "error: *** *** on *** exceeded its progress deadline" in the journal, status and Events
    cmd = ("sh -c 'echo \"error: $1 $2 on $3 exceeded its progress deadline (as $4, $5, $6)\"; exit 1' check deployment podinfo "
           "web-canary.shop.svc.cluster.local tok-S3CRET-ARG --token=S3CRETTOKEN DEPLOY_KEY=hunter2hunter2")
    result = Caller().call(hook(name="rollout", cmd=cmd), {})
    assert result.detail == ("rollout: `sh …` exited 1: error: deployment podinfo on web-canary.shop.svc.cluster.local exceeded its "
                             "progress deadline (as ***, --token=***, DEPLOY_KEY=***)"), result.detail


#: A tool that says what it was given, as many do when they refuse it (``Access denied for …``, ``usage: …``).
DENIES = '#!/bin/sh\necho "$(basename "$0"): denied: $*"\nexit 1\n'


@pytest.mark.parametrize(("cmd", "secret"), [
    ("mysql -h db -uroot -pwinter", "winter"),
    ("redis-cli -a mypassword ping", "mypassword"),
    ("sshpass -p hunter ssh web", "hunter"),
    ("migrate --db-pw=winter up", "winter"),
    ("migrate --db-pw winter up", "winter"),
    ("gate abcdefghijklmnopqrst", "abcdefghijklmnopqrst"),
    ("gate correct-horse-battery-staple", "correct-horse-battery-staple"),
    ("sh -c 'echo \"mysql: unknown option $1\"; exit 1' x -pwinter", "winter"),
    ("sh -c 'echo \"redis: auth failed for $2\"; exit 1' x -a mypassword", "mypassword"),
    ("sh -c 'mysql -h db -pwinter -e \"select 1\"'", "winter"),
    ("sh -c 'redis-cli -a mypassword ping && echo ok'", "mypassword"),
    ("sh -c 'set -x; sshpass -p hunter ssh web; exit 1'", "hunter"),
    ("sh -c 'gate --db-pw=winter; exit 1'", "winter"),
    ("sh -c 'gate correct-horse-battery-staple'", "correct-horse-battery-staple"),
], ids=["glued-short-option", "short-option", "short-option-p", "option-equals", "option-pw", "long-lowercase-key", "passphrase",
        "positional-glued", "positional-short-option", "script-glued", "script-short-option", "script-traced", "script-option-equals",
        "script-passphrase"])
def test_an_argument_that_may_be_a_secret_is_masked_in_a_command_hooks_output(cmd: str, secret: str, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # only pieces that read as tokens were masked: a password glued to its short option (`-pwinter`), the value of an option
    # not named as a credential (`-a`, `-p`, `--db-pw`), a long lowercase key or a passphrase were printed into the journal,
    # Events and alerts; inside a script, a token was masked only where the whole script was printed
    for name in ("mysql", "redis-cli", "sshpass", "migrate", "gate"):
        (tmp_path / name).write_text(DENIES)
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = Caller().call(hook(name="rollout", cmd=cmd), {})
    assert not result.ok
    assert secret not in result.detail and "***" in result.detail, result.detail


def test_a_load_testers_short_option_values_stay_in_its_output() -> None:
    # an option's value is masked whatever the option's name, but not one shorter than a token: a load test's failure
    # still says its duration, rate and concurrency
    cmd = "sh -c 'echo \"hey: $2 at $4 qps by $6 workers on $7 failed\"; exit 1' hey -z 4s -q 25 -c 8 podinfo"
    result = Caller().call(hook(name="load", cmd=cmd), {})
    assert result.detail == "load: `sh …` exited 1: hey: 4s at 25 qps by 8 workers on podinfo failed", result.detail


def says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, printed: str, *tools: str) -> None:
    """Stand-ins for ``tools`` on the PATH, each printing ``printed`` and failing, whatever its arguments."""
    for name in tools:
        (tmp_path / name).write_text(f"#!/bin/sh\ncat <<'EOF'\n{printed}\nEOF\nexit 1\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(("cmd", "printed", "scrubbed"), [
    ("kubectl -n prod rollout status deployment/web", "deployment/web in production (namespace prod) exceeded its progress deadline",
     "deployment/web in production (namespace ***) exceeded its progress deadline"),
    ("kubectl --namespace test get deployment web", "image web:latest in test is not ready", "image web:latest in *** is not ready"),
    ("curl -fsS -X POST http://127.0.0.1:9/approve", "curl: (22) 409: already POSTED", "curl: (22) 409: already POSTED"),
    ("loadtest -n 1000 --env=staging", "10000 requests planned, 1000 sent to staging, staging2 idle",
     "10000 requests planned, *** sent to ***, staging2 idle"),
    ("sh -c 'kubectl -n prod rollout status deployment/web'", "deployment/web in production (namespace prod) exceeded its progress deadline",
     "deployment/web in production (namespace ***) exceeded its progress deadline"),
    ("migrate --db-pw winter up", "denied: winter2 is not winter", "denied: ***2 is not ***"),
    ("hey -host canary-lab-promotion.lab.test -z 4s -q 25 -c 8 -H 'X-Canary: always' http://127.0.0.1:18080/",
     "Requests/sec: 24.9925 | Status code distribution: [200] 80 responses, [503] 20 responses",
     "Requests/sec: 24.9925 | Status code distribution: [200] 80 responses, [503] 20 responses"),
], ids=["short-option", "long-option", "method", "number-and-assignment", "script", "credential-option", "lab-load-test"])
def test_an_ordinary_option_value_is_masked_as_a_word_of_its_own_only(cmd: str, printed: str, scrubbed: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the value of an option or `k=v` not named as a credential was replaced wherever it appeared: `-n prod` turned
    # "production" into "***uction", `-X POST` "POSTED" into "***ED", `-n 1000` 10000 into "***0"; a credential's value
    # (`--db-pw`) is still replaced inside words too
    says(tmp_path, monkeypatch, printed, "kubectl", "curl", "loadtest", "migrate", "hey")
    result = Caller().call(hook(name="rollout", cmd=cmd), {})
    assert not result.ok and result.detail.endswith(f"exited 1: {scrubbed}"), result.detail


@pytest.mark.parametrize(("cmd", "printed", "scrubbed"), [
    ("curl -fsS http://flagger-loadtester.test/", "curl: (6) Could not resolve host: flagger-loadtester.test",
     "curl: (6) Could not resolve host: flagger-loadtester.test"),
    ("sh -c 'curl -fsS http://flagger-loadtester.test/approve?team=shop'", "curl: (6) Could not resolve host: flagger-loadtester.test",
     "curl: (6) Could not resolve host: flagger-loadtester.test"),
    ("curl -fsS http://gate:S3cretPassw0rd@flagger-loadtester.test/hooks/T0A1B2C3/XyZ0123456789abcdefQ?token=abcdefghijklmnopqrst",
     "flagger-loadtester.test refused S3cretPassw0rd T0A1B2C3 XyZ0123456789abcdefQ abcdefghijklmnopqrst",
     "flagger-loadtester.test refused *** *** *** ***"),
], ids=["host", "script-host", "host-and-tokens"])
def test_a_urls_host_stays_in_a_command_hooks_output_and_its_tokens_do_not(cmd: str, printed: str, scrubbed: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a host label of 16 characters or more was masked as a long piece of its argument: "Could not resolve host: ***.test"
    says(tmp_path, monkeypatch, printed, "curl")
    result = Caller().call(hook(name="gate", cmd=cmd), {})
    assert not result.ok and result.detail.endswith(f"exited 1: {scrubbed}"), result.detail


@pytest.mark.parametrize(("cmd", "printed", "scrubbed"), [
    ("""curl -d '{"password":"winterwinter"}' http://127.0.0.1:9/login""", "login failed: password winterwinter has expired",
     "login failed: password *** has expired"),
    ("""sh -c 'curl -d "{\\"password\\": \\"winterwinter\\"}" http://127.0.0.1:9/login'""", "login failed: password winterwinter has expired",
     "login failed: password *** has expired"),
    ("""curl -d '{"pin":"w1nterw1nter"}' http://127.0.0.1:9/login""", "pin w1nterw1nter rejected", "pin *** rejected"),
    ("""curl --data '[Zq8sessionVAL]' http://127.0.0.1:9/login""", "session Zq8sessionVAL unknown", "session *** unknown"),
], ids=["credential-member", "script-credential-member", "quoted-token", "bracketed-token"])
def test_a_secret_inside_a_quoted_or_bracketed_argument_is_masked_bare(cmd: str, printed: str, scrubbed: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the pieces of `{"password":"…"}` kept its quotes and braces, and a JSON member named as a credential was not read
    # as one: the bare password a server answered with reached the journal, Events and alerts
    says(tmp_path, monkeypatch, printed, "curl")
    result = Caller().call(hook(name="login", cmd=cmd), {})
    assert not result.ok and result.detail.endswith(f"exited 1: {scrubbed}"), result.detail


def test_a_rollout_commands_result_from_the_release_never_names_its_arguments(tmp_path: Path) -> None:
    # the release's own details (a command that could not start, one a person's answer stopped) quoted the command line
    from canary.release.hooks import Hooks
    from canary.release.ports import Clock

    secret = "tok-S3CRET-ARG"
    release_spec = spec().model_copy(deep=True)
    release_spec.analysis.webhooks.extend([
        Webhook.model_validate({"name": "missing", "type": "rollout", "cmd": f"{tmp_path}/tok-dir-secret/loader --token={secret}"}),
        Webhook.model_validate({"name": "load", "type": "rollout", "cmd": f"sh -c 'sleep 30' {secret}"}),
    ])
    results: list[HookResult] = []
    hooks = Hooks(Caller(), release_spec, Clock(), threading.Event(), lambda s, r, w: results.append(r))
    running = hooks.start_rollout(state())
    hooks.finish_rollout(state(), running, time.monotonic(), cut="canary promote")
    assert [(r.name, r.ok) for r in results] == [("missing", False), ("load", False)]
    assert results[0].detail.startswith("missing: could not start: ") and "loader" in results[0].detail, results[0].detail
    assert results[1].detail == "load: stopped: canary promote", results[1].detail
    assert not [s for r in results for s in (secret, "tok-dir-secret", str(tmp_path)) if s in r.detail], results



#: Stand-ins for the tools a load tester's script runs, each printing what the real one prints of its
#: arguments (a URL, an option's value, a header's token) and an ordinary line, then failing.
TOOLS = {
    "wget": 'echo "--2026-12-02 10:15:00--  $2"; echo "Connecting to 127.0.0.1:9... failed: Connection refused."; exit 4',
    "loadtest": 'for a in "$@"; do case "$a" in --token=*) echo "loadtest: token ${a#--token=} was refused";; esac; done; '
                'echo "Connecting to 127.0.0.1:9... failed: Connection refused."; exit 1',
    "curl": 'echo "curl: sent ${2#Authorization: Bearer } to 127.0.0.1:9"; echo "Connecting to 127.0.0.1:9... failed: Connection refused."; exit 7',
    "hey": 'echo "hey: bad key $2"; echo "Connecting to 127.0.0.1:9... failed: Connection refused."; exit 1',
}


@pytest.mark.parametrize(
    "script",
    [
        "wget -O- http://127.0.0.1:9/hook?token=S3CRETTOKEN",
        "loadtest --token=S3CRETTOKEN -z 1m",
        'curl -H "Authorization: Bearer S3CRETTOKEN" http://127.0.0.1:9/',
        "hey --api-key S3CRETTOKEN -z 1m; exit 1",
    ],
)
def test_a_secret_inside_a_scripts_argument_never_reaches_the_result_and_ordinary_words_stay(
        script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an imported load tester runs `sh -c '<script>'`: the script is one argument, masked only whole, and a tool
    # that quoted a URL, an option's value or a header of it showed the token in the journal, status and chat
    for name, body in TOOLS.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = Caller().call(hook(name="load", type="pre-rollout", cmd=f"sh -c '{script}'"), {})
    assert not result.ok
    assert "S3CRET" not in result.detail, result.detail
    assert result.detail.endswith("| Connecting to 127.0.0.1:9... failed: Connection refused."), result.detail
    assert "***" in result.detail, result.detail  # what quoted the token is still there, masked


def test_ordinary_words_of_a_script_and_its_short_values_stay_in_its_output() -> None:
    # only what may be a secret is taken from a script (a URL's parts, an option's value), not its programs
    # or messages, nor a value shorter than a token (``q=10``): its output quotes them
    cmd = """sh -c 'set -- --token=S3CRETTOKEN http://127.0.0.1:9/; echo checking web: sleep then retry; q=10; echo "check failed, exit $q"; exit 2'"""
    result = Caller().call(hook(cmd=cmd), {})
    assert result.detail.endswith("exited 2: checking web: sleep then retry | check failed, exit 10"), result.detail


@pytest.mark.parametrize(("script", "secret"), [
    ("curl -sf http://127.0.0.1:9/ -u sk_test_4eC39HqLyjWDarjtT1zdp7dc:", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),  # an API key as the user
    ("curl -sf http://127.0.0.1:9/ -u apikey0123456", "apikey0123456"),
    ("JWT=eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl; echo $JWT", "eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"),
    ("GITHUB_PAT=ghp0123abcdXYZ; echo $GITHUB_PAT", "ghp0123abcdXYZ"),
    ('curl -sfH "X-Gate-Signature: 9f8e7d6c5b4a" http://127.0.0.1:9/', "9f8e7d6c5b4a"),
    ('curl -H "Cookie: a=1; session=Zq8sessionVAL" http://127.0.0.1:9/', "Zq8sessionVAL"),
    ("curl http://127.0.0.1:9/gate/s3cr3t; echo s3cr3t", "s3cr3t"),
    ("curl http://127.0.0.1:9/gate/QwErTyUiOpAs; echo QwErTyUiOpAs", "QwErTyUiOpAs"),
], ids=["user-as-key", "user-no-colon", "jwt", "pat", "combined-short-flags", "cookie-value", "short-path-token", "letters-only-token"])
def test_the_credentials_a_script_names_stay_masked_in_its_output(script: str, secret: str) -> None:
    # each shown by the tool or by the script itself (set -x, an echo of the variable)
    result = Caller().call(hook(cmd=f"sh -c 'set -x; {script}; exit 3'"), {})
    assert not result.ok and secret not in result.detail, result.detail


def test_a_scripts_own_messages_stay_whole_and_a_token_in_its_urls_path_is_still_masked() -> None:
    # read as headers ("error: …"), path segments ("check") and the value after `sort -u`, a failed gate's own
    # diagnostics were masked out of the journal, status and Events a person reads
    cmd = ("sh -c 'set -- -u admin:hunter2pw http://127.0.0.1:9/api/approvals/check https://hooks.example.com/services/T0A1B2C3/XyZ0123456789abcdefQ; "
           "sort -u /tmp/x 2>/dev/null; echo \"error: database migration pending\"; echo \"Status: rollout blocked by policy\"; "
           "echo \"check failed at /api/approvals/check as admin:hunter2pw T0A1B2C3 XyZ0123456789abcdefQ\"; exit 3'")
    result = Caller().call(hook(cmd=cmd), {})
    assert "error: database migration pending | Status: rollout blocked by policy | check failed at /api/approvals/check as admin:" in result.detail, \
        result.detail
    assert "hunter2pw" not in result.detail and "T0A1B2C3" not in result.detail and "XyZ0123456789abcdefQ" not in result.detail, result.detail

#: metadata larger than a pipe's buffer (64 KiB on Linux)
BIG = {"blob": "x" * 200_000}


def test_a_command_that_never_reads_a_large_body_is_still_killed_at_its_timeout() -> None:
    # the body was written whole before the deadline was watched: the write blocked until `sleep 15` exited,
    # and the gate said yes after 15 s
    gate = hook(name="gate", type="confirm-promotion", cmd="sleep 15", timeout="1s", metadata=BIG)
    started = time.monotonic()
    result = Caller().call(gate, payload(gate, spec(), state()))
    took = time.monotonic() - started
    assert not result.ok, result
    assert result.detail == "gate: `sleep …` timed out after 1s and was killed", result.detail
    assert 0.9 <= took < 3.0, took


def test_a_cancel_kills_a_command_that_never_reads_a_large_body_at_once() -> None:
    gate = hook(name="gate", type="confirm-promotion", cmd="sleep 15", timeout="60s", metadata=BIG)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    result = Caller().call(gate, payload(gate, spec(), state()), cancel)
    took = time.monotonic() - started
    assert not result.ok and "was cancelled with the release and was killed" in result.detail, result.detail
    assert took < 1.5, took


def test_a_command_reads_a_body_larger_than_the_pipes_buffer_whole(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    gate = hook(name="gate", type="confirm-promotion", cmd=f"sh -c 'sleep 0.3; cat > {out}'", metadata=BIG)
    body = payload(gate, spec(), state())
    assert Caller().call(gate, body).ok
    assert json.loads(out.read_text()) == body


def test_a_command_past_its_timeout_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pgid"
    # a shell that starts a child and waits on another: both must go
    cmd = f"sh -c 'echo $$ > {pidfile}; sleep 30 & sleep 30; wait'"
    started = time.monotonic()
    result = Caller().call(hook(cmd=cmd, timeout="1s"), {})
    took = time.monotonic() - started
    assert not result.ok
    assert "timed out after 1s and was killed" in result.detail
    assert 0.9 <= took < 3.0, took
    pgid = wait_for_pid(pidfile)
    assert poll(lambda: not group_members(pgid), timeout=2.0), f"left running: {group_members(pgid)}"


@pytest.mark.parametrize("status", [0, 3])
def test_a_command_that_exits_takes_what_it_left_running_with_it(tmp_path: Path, status: int) -> None:
    # its background children held the output pipe: the call waited 5 s for them, then left them running
    pidfile = tmp_path / "pgid"
    started = time.monotonic()
    result = Caller().call(hook(cmd=f"sh -c 'echo $$ > {pidfile}; sleep 30 & exit {status}'", timeout="5s"), {})
    took = time.monotonic() - started
    assert result.ok is (status == 0), result
    assert result.detail.startswith(f"x: `sh …` exited {status}"), result.detail
    assert took < 2.0, took
    pgid = wait_for_pid(pidfile)
    assert poll(lambda: not group_members(pgid), timeout=2.0), f"left running: {group_members(pgid)}"


def test_the_output_of_a_command_is_read_no_longer_than_its_deadline(tmp_path: Path) -> None:
    # a child that left the group (its own session) keeps the output pipe open: it is not the hook's to kill,
    # and the call waits for its output until the hook's deadline only
    pidfile = tmp_path / "escaped"
    script = tmp_path / "escape.sh"
    script.write_text(f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' &\nwhile [ ! -s {pidfile} ]; do sleep 0.05; done\nexit 0\n")
    started = time.monotonic()
    try:
        result = Caller().call(hook(cmd=f"sh {script}", timeout="1s"), {})
        took = time.monotonic() - started
        assert result.ok and result.detail.endswith("exited 0"), result
        assert took < 2.5, took
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(wait_for_pid(pidfile), signal.SIGKILL)


def test_a_cancel_kills_a_running_command_at_once(tmp_path: Path) -> None:
    pidfile = tmp_path / "pgid"
    cancel = threading.Event()
    results: list[HookResult] = []
    target = hook(cmd=f"sh -c 'echo $$ > {pidfile}; sleep 30 & sleep 30; wait'", timeout="60s")
    worker = threading.Thread(target=lambda: results.append(Caller().call(target, {}, cancel)), daemon=True)
    worker.start()
    pgid = wait_for_pid(pidfile)
    assert group_members(pgid)
    cancel.set()
    cancelled = time.monotonic()
    worker.join(BOUND_S)
    assert not worker.is_alive()
    # under the second an abort is promised in (a loaded machine may be slow to schedule the kill); a kill
    # that missed the group's other process, holding the output pipe, waits the reader's 1 s and fails this
    assert time.monotonic() - cancelled < 0.9
    assert not results[0].ok and "was cancelled with the release and was killed" in results[0].detail
    assert poll(lambda: not group_members(pgid), timeout=2.0), f"left running: {group_members(pgid)}"


def test_start_and_finish_kill_a_command_at_the_deadline_given() -> None:
    caller = Caller()
    target = hook(cmd="sleep 30", timeout="1h")
    process = caller.start(target)
    assert process.poll() is None
    started = time.monotonic()
    result = caller.finish(target, process, started + 0.3)
    took = time.monotonic() - started
    assert not result.ok and "was killed" in result.detail
    assert 0.25 <= took < 2.0, took
    assert process.returncode is not None and process.returncode < 0  # killed by a signal, and reaped
    assert not group_members(process.pid)


def test_finish_collects_a_command_that_ends_before_its_deadline() -> None:
    caller = Caller()
    target = hook(cmd="sh -c 'echo done'")
    process = caller.start(target)
    result = caller.finish(target, process, time.monotonic() + BOUND_S)
    assert result.ok and result.detail.endswith("exited 0")
    assert result.seconds < BOUND_S


# --- alerts ---------------------------------------------------------------------------------------


SECRET_PATH = "/services/T000/B000/xoxb-do-not-leak"


def alert(url: str, kind: str = "slack", **fields: Any) -> Alert:
    return Alert.model_validate({"name": "team", "type": kind, "url": url, **fields})


@pytest.mark.parametrize("kind", ["slack", "msteams"])
def test_an_alert_posts_the_chat_message_to_its_url_and_never_names_the_url(receiver: Receiver, kind: str) -> None:
    target = alert(receiver.url + SECRET_PATH, kind, channel="#releases")
    body = notify.message(target, spec(), state(), "web: weight 20", Severity.WARN)
    result = Caller().alert(target, body)
    assert result.ok, result
    assert (result.name, result.type) == ("team", f"alert:{kind}")
    (request,) = receiver.wait_for(1)
    assert (request.method, request.path) == ("POST", SECRET_PATH)
    assert request.json() == body
    assert "do-not-leak" not in result.detail and str(receiver.port) not in result.detail


def test_a_discord_alert_goes_to_the_slack_compatible_endpoint(receiver: Receiver) -> None:
    target = alert(receiver.url + "/api/webhooks/42/tok-do-not-leak", "discord")
    body = notify.message(target, spec(), state(), "promoted", Severity.INFO)
    result = Caller().alert(target, body)
    assert result.ok, result
    (request,) = receiver.wait_for(1)
    assert request.path == "/api/webhooks/42/tok-do-not-leak/slack"
    assert request.json()["attachments"][0]["text"] == "promoted"
    assert "do-not-leak" not in result.detail


def test_an_alert_never_follows_a_redirect_and_names_no_host(receiver: Receiver) -> None:
    # the alert URL is the secret: the host a redirect names is within its scope
    with http_receiver() as elsewhere:
        receiver.answers[SECRET_PATH] = (307, {"Location": elsewhere.url + "/elsewhere"})
        target = alert(receiver.url + SECRET_PATH)
        result = Caller().alert(target, notify.message(target, spec(), state(), "promoted", Severity.INFO))
        assert elsewhere.requests == []
    assert not result.ok
    assert result.detail.startswith("slack alert answered 307"), result.detail
    assert "127.0.0.1" not in result.detail and "do-not-leak" not in result.detail


@pytest.mark.parametrize("how", ["refused", "500", "hangs"])
def test_a_failed_alert_says_so_without_the_url(receiver: Receiver, how: str) -> None:
    url = refused_url() if how == "refused" else receiver.url
    receiver.status = 500
    receiver.hang = how == "hangs"
    target = alert(url + SECRET_PATH, timeout="1s")
    started = time.monotonic()
    result = Caller().alert(target, notify.message(target, spec(), state(), "rolled back", Severity.ERROR))
    assert not result.ok
    assert time.monotonic() - started < 3.0
    assert "do-not-leak" not in result.detail and "127.0.0.1" not in result.detail
    assert result.detail.startswith("slack alert ")


def test_an_alert_whose_server_trickles_its_answer_is_abandoned_at_its_timeout() -> None:
    """The client's timeout bounds each read: a chat server sending a byte every 0.2 s held the delivery queue every
    receiver shares 7 s past a 1 s timeout, and the release's last messages were dropped at its end."""
    with trickling_server(5.0) as url:
        target = alert(url + SECRET_PATH, timeout="1s")
        started = time.monotonic()
        result = Caller().alert(target, notify.message(target, spec(), state(), "rolled back", Severity.ERROR))
        took = time.monotonic() - started
    assert took < 3.5, took  # its timeout and a second's grace, not the 5 s the answer takes
    assert not result.ok and "timed out after 1s" in result.detail and "do-not-leak" not in result.detail, result.detail


# --- the delivery queue ---------------------------------------------------------------------------


class Calls:
    """Calls handed to a Delivery: each records its name and thread; ``blocker`` holds the first one."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.threads: set[int] = set()
        self.started = threading.Event()
        self.blocker = threading.Event()
        self.failures: list[HookResult] = []
        self.all_done = threading.Event()
        self.expected = 0

    def call(self, name: str, ok: bool = True, block: bool = False) -> Any:
        def run() -> HookResult:
            self.threads.add(threading.get_ident())
            self.started.set()
            if block:
                self.blocker.wait(BOUND_S)
            self.done.append(name)
            if len(self.done) == self.expected:
                self.all_done.set()
            return HookResult(name, "event", ok, 0.0, f"{name} {'ok' if ok else 'failed'}")

        return run


def test_delivery_calls_in_order_off_the_callers_thread_and_reports_failures() -> None:
    calls = Calls()
    delivery = Delivery(on_failure=calls.failures.append)
    names = [f"hook-{i}" for i in range(20)]
    calls.expected = len(names)
    for i, name in enumerate(names):
        delivery.put(name, "event", calls.call(name, ok=i != 7))
    assert calls.all_done.wait(BOUND_S)
    assert calls.done == names
    assert threading.get_ident() not in calls.threads and len(calls.threads) == 1
    assert delivery.close(BOUND_S) == 0
    assert [f.detail for f in calls.failures] == ["hook-7 failed"]


def test_put_never_blocks_and_drops_past_its_limit() -> None:
    calls = Calls()
    delivery = Delivery(on_failure=calls.failures.append, limit=2)
    delivery.put("slow", "event", calls.call("slow", block=True))
    assert calls.started.wait(BOUND_S)  # the worker is inside the first call
    started = time.monotonic()
    delivery.put("a", "event", calls.call("a"))
    delivery.put("b", "event", calls.call("b"))
    delivery.put("c", "event", calls.call("c"))  # the queue holds 2: dropped, reported at once
    assert time.monotonic() - started < 1.0  # three puts take microseconds; one that waited for room (even 1 s) fails
    assert [(f.name, f.ok) for f in calls.failures] == [("c", False)]
    assert "dropped" in calls.failures[0].detail
    calls.expected = 3
    calls.blocker.set()
    assert calls.all_done.wait(BOUND_S)
    assert calls.done == ["slow", "a", "b"]
    assert delivery.close(BOUND_S) == 0


def test_close_reports_what_was_left_one_failure_per_receiver() -> None:
    calls = Calls()
    delivery = Delivery(on_failure=calls.failures.append)
    delivery.put("chat", "alert:slack", calls.call("chat", block=True))
    assert calls.started.wait(BOUND_S)
    delivery.put("audit", "event", calls.call("audit"))
    delivery.put("audit", "event", calls.call("audit"))
    delivery.put("chat", "alert:slack", calls.call("chat"))
    started = time.monotonic()
    left = delivery.close(0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert left == 4
    reported = sorted((f.name, f.type, f.ok, f.detail) for f in calls.failures)
    assert reported == [
        ("audit", "event", False, "2 calls not delivered within 0.3s of the release's end"),
        ("chat", "alert:slack", False, "2 calls not delivered within 0.3s of the release's end"),
    ]
    # the hanging call ends later: nothing more is reported, nothing more is called
    calls.blocker.set()
    assert poll(lambda: calls.done == ["chat"], timeout=2.0)
    assert len(calls.failures) == 2


def test_a_call_that_raises_is_a_failed_delivery_and_the_queue_goes_on() -> None:
    # a malformed alert URL made the HTTP client raise: the worker died, every later event was lost
    # and close said nothing was left
    calls = Calls()
    delivery = Delivery(on_failure=calls.failures.append)

    def raises() -> HookResult:
        raise ValueError("Failed to parse: https://hooks..slack.com/services/T0/B0/do-not-leak")

    calls.expected = 2
    delivery.put("team", "alert:slack", raises)
    delivery.put("audit", "event", calls.call("audit"))
    delivery.put("audit", "event", calls.call("audit"))
    assert calls.all_done.wait(BOUND_S)
    assert delivery.close(BOUND_S) == 0
    (failure,) = calls.failures
    assert (failure.name, failure.type, failure.ok) == ("team", "alert:slack", False)
    assert "ValueError" in failure.detail and "do-not-leak" not in failure.detail and "slack.com" not in failure.detail


def test_close_counts_what_is_still_queued_when_the_worker_died(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the worker's death is expected here
    reported: list[HookResult] = []

    def on_failure(result: HookResult) -> None:
        reported.append(result)
        if len(reported) == 1:
            raise RuntimeError("the journal is gone")  # kills the worker

    calls = Calls()
    delivery = Delivery(on_failure=on_failure)
    delivery.put("audit", "event", calls.call("audit", ok=False, block=True))
    assert calls.started.wait(BOUND_S)
    delivery.put("audit", "event", calls.call("audit"))
    delivery.put("team", "alert:slack", calls.call("team"))
    calls.blocker.set()
    assert poll(lambda: len(reported) == 1)
    started = time.monotonic()
    assert delivery.close(0.5) == 2
    assert time.monotonic() - started < 2.0
    assert sorted((r.name, r.detail) for r in reported[1:]) == [
        ("audit", "1 calls not delivered within 0.5s of the release's end"),
        ("team", "1 calls not delivered within 0.5s of the release's end"),
    ]


def test_posting_to_a_malformed_url_is_a_failed_answer_not_an_exception() -> None:
    target = alert("https://hooks..slack.com" + SECRET_PATH)
    result = Caller().alert(target, {"text": "x"})
    assert not result.ok
    assert result.detail.startswith("slack alert failed: ") and "do-not-leak" not in result.detail and "slack.com" not in result.detail


def test_close_without_anything_put_returns_at_once() -> None:
    delivery = Delivery(on_failure=lambda result: pytest.fail(f"unexpected failure {result}"))
    started = time.monotonic()
    assert delivery.close(5.0) == 0
    assert time.monotonic() - started < 1.0  # not the 5 s given (the bound leaves room for a loaded machine)


def test_event_hooks_and_alerts_go_through_the_delivery_to_real_receivers(receiver: Receiver) -> None:
    """The path a release uses: Hooks.event puts an event hook's call and an alert on the queue."""
    from canary.release.hooks import Hooks
    from canary.release.ports import Clock

    release_spec = ReleaseSpec.model_validate({
        **spec().model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"analysis"}),
        "analysis": {"stepWeight": 10, "maxWeight": 50,
                     "webhooks": [{"name": "audit", "type": "event", "url": receiver.url + "/event"}],
                     "alerts": [{"name": "team", "type": "slack", "url": receiver.url + SECRET_PATH, "severity": "warn"}]},
    })
    results: list[tuple[Any, HookResult, Any]] = []
    hooks = Hooks(Caller(), release_spec, Clock(), threading.Event(), lambda s, r, w: results.append((s, r, w)))
    hooks.event(state(), "weight 20", Severity.INFO)  # the alert admits warn and up: only the event hook
    hooks.event(state(), "rolling back", Severity.ERROR)
    requests = receiver.wait_for(3)
    assert hooks.close(BOUND_S) == 0
    assert [r.path for r in requests] == ["/event", "/event", SECRET_PATH]
    assert [r.json()["message"] for r in requests[:2]] == ["weight 20", "rolling back"]
    assert requests[2].json()["attachments"][0]["text"] == "rolling back"
    assert results == []  # nothing failed



def test_an_event_hook_gets_flaggers_event_payload(receiver: Receiver) -> None:
    """Flagger puts the event in the metadata (eventMessage, eventType, timestamp in ms, over the hook's own
    keys) and sends a checksum of the canary's configuration; canary's ``message`` stays at the top."""
    from datetime import UTC, datetime

    from canary.release.hooks import Hooks
    from canary.release.ports import Clock

    class Fixed(Clock):
        def now(self) -> datetime:
            return datetime(2026, 12, 2, 10, 15, 0, 250000, tzinfo=UTC)

    release_spec = ReleaseSpec.model_validate({
        **spec().model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"analysis"}),
        "analysis": {"stepWeight": 10, "maxWeight": 50, "webhooks": [
            {"name": "audit", "type": "event", "url": receiver.url + "/event", "metadata": {"team": "shop", "eventType": "mine"}}]},
    })
    hooks = Hooks(Caller(), release_spec, Fixed(), threading.Event(), lambda s, r, w: pytest.fail(f"unexpected {r}"))
    hooks.event(state(), "weight 20", Severity.INFO)
    hooks.event(state(), "rolling back", Severity.ERROR)
    info, error = receiver.wait_for(2)
    assert hooks.close(BOUND_S) == 0
    assert info.json() == {
        "name": "web", "namespace": "shop", "phase": "Progressing", "releasePhase": "Progressing", "weight": 20,
        "release": "20261202T101500-4711", "type": "event", "checksum": "bbbb", "message": "weight 20",
        "metadata": {"team": "shop", "eventMessage": "weight 20", "eventType": "Normal", "timestamp": "1796206500250"},
        "canaryImage": "registry.example.com/shop/web:2.0.0", "stableImage": "registry.example.com/shop/web:1.0.0",
    }
    assert error.json()["metadata"] == {"team": "shop", "eventMessage": "rolling back", "eventType": "Warning", "timestamp": "1796206500250"}


@pytest.mark.parametrize(("phase", "sent"), [
    (Phase.INITIALIZING, "Progressing"), (Phase.PROGRESSING, "Progressing"), (Phase.WAITING_PROMOTION, "WaitingPromotion"),
    (Phase.WAITING_DECISION, "WaitingPromotion"), (Phase.PROMOTING, "Promoting"), (Phase.FINALISING, "Finalising"),
    (Phase.SUCCEEDED, "Succeeded"), (Phase.ROLLING_BACK, "Failed"), (Phase.FAILED, "Failed"), (Phase.ABORTED, "Failed"),
    (Phase.PROMOTED_UNVERIFIED, "Failed"),
])
def test_an_event_hook_is_sent_the_phase_flaggers_canary_status_would_show_and_canary_s_own_apart(phase: Phase, sent: str) -> None:
    """Flagger sends an event hook its Canary's status; it has no phase for canary's own (Initializing,
    WaitingDecision, RollingBack, Aborted, PromotedUnverified), which go in ``releasePhase``."""
    event = hook(name="audit", type="event", url="http://audit/")
    body = event_payload(event, spec(), state().model_copy(update={"phase": phase, "canary_deployed": True}), "m", Severity.INFO, datetime.now(UTC))
    assert (body["phase"], body["releasePhase"]) == (sent, phase.value)


def test_while_the_confirm_rollout_gate_says_no_event_hooks_are_sent_waiting_as_flagger_sends_them() -> None:
    waiting = state().model_copy(update={"phase": Phase.INITIALIZING, "waiting": True, "canary_deployed": False})
    assert flagger_phase(WebhookType.EVENT, waiting) == "Waiting"
    assert flagger_phase(WebhookType.CONFIRM_ROLLOUT, waiting) == "Waiting"
    assert flagger_phase(WebhookType.EVENT, waiting.model_copy(update={"canary_deployed": True})) == "Progressing"


# --- the name hooks are sent ----------------------------------------------------------------------


def _named(webhook_name: str) -> ReleaseSpec:
    return spec().model_copy(update={"analysis": spec().analysis.model_copy(update={"webhook_name": webhook_name})})


def test_hooks_are_sent_the_app_s_name_unless_analysis_webhook_name_says_another(tmp_path: Path) -> None:
    """Flagger sends its Canary's name, and its load tester keys gates on ``<name>.<namespace>``: a Canary named
    otherwise than its Deployment had gates opened for a name canary never sent."""
    gate = hook(name="gate", type="confirm-promotion", url="http://gate/")
    assert payload(gate, spec(), state())["name"] == "web"
    assert payload(gate, _named("web-release"), state())["name"] == "web-release"
    event = hook(name="audit", type="event", url="http://audit/")
    body = event_payload(event, _named("web-release"), state(), "m", Severity.INFO, datetime.now(UTC))
    assert (body["name"], body["namespace"]) == ("web-release", "shop")
    # a command hook reads the same body on its standard input
    out = tmp_path / "seen"
    command = hook(name="gate", type="confirm-promotion", cmd=f"sh -c 'cat > {out}'")
    assert Caller().call(command, payload(command, _named("web-release"), state())).ok
    assert json.loads(out.read_text())["name"] == "web-release"


@pytest.mark.parametrize("value", ["Web_Release", "web release", "-web", "", "w" * 254])
def test_a_webhook_name_that_is_no_kubernetes_name_is_refused_naming_the_field(value: str) -> None:
    from canary.core.spec import parse_stack
    from canary.errors import InvalidSpec

    values = {**spec().model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"analysis"}),
              "prometheus": {"address": "http://prometheus:9090"},
              "analysis": {"stepWeight": 10, "metrics": [{"name": "request-error-rate", "thresholdRange": {"max": 1}}], "webhookName": value}}
    with pytest.raises(InvalidSpec) as info:
        parse_stack(values)
    (problem,) = info.value.problems
    assert problem.field == "analysis.webhookName" and "DNS-1123 subdomain" in problem.rule, problem


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def test_a_command_hook_still_running_when_the_release_ends_is_killed_with_it(tmp_path: Path) -> None:
    # an event hook with a long timeout was reported "not delivered" at the release's end and left running: each
    # command runs in a session of its own, so neither canary's end nor a terminal's signal reaches it
    from canary.release.hooks import Hooks
    from canary.release.ports import Clock

    pidfile = tmp_path / "pid"
    release_spec = spec().model_copy(deep=True)
    release_spec.analysis.webhooks.append(Webhook.model_validate({"name": "audit", "type": "event", "timeout": "10m",
                                                                   "cmd": f"sh -c 'echo $$ > {pidfile}; exec sleep 120'"}))
    hooks = Hooks(Caller(), release_spec, clock=Clock(), cancel=threading.Event(), on_result=lambda *a: None)
    hooks.event(state(), "release started")
    assert poll(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    try:
        assert hooks.close(0.5) == 1
        assert poll(lambda: not _alive(pid)), "the event command outlived the release"
    finally:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_a_command_hook_reads_what_an_http_hook_is_sent_on_its_standard_input(tmp_path: Path) -> None:
    # it got two variables only: an event command never saw the event's message, a gate not which release it judged
    out = tmp_path / "seen"
    hook = Webhook.model_validate({"name": "audit", "type": "event", "timeout": "5s", "cmd": f"sh -c 'cat > {out}'"})
    body = {"name": "web", "namespace": "shop", "phase": "Progressing", "checksum": "bbbb", "message": "shifting to step 2: 20%"}
    assert Caller().call(hook, body).ok
    assert json.loads(out.read_text()) == body
    quiet = Webhook.model_validate({"name": "quiet", "type": "event", "timeout": "5s", "cmd": "true"})  # reads nothing: still a yes
    assert Caller().call(quiet, body).ok


def _two_apps(web: dict[str, Any], api: dict[str, Any], api_namespace: str) -> dict[str, Any]:
    app = spec().model_dump(by_alias=True, exclude_none=True, mode="json", include={"app", "gateway"})
    analysis = {"stepWeight": 10, "metrics": [{"name": "request-error-rate", "thresholdRange": {"max": 1}}]}
    return {"prometheus": {"address": "http://prometheus:9090"},
            "apps": {"web": {**app, "app": {**app["app"], "name": "web", "namespace": "shop"}, "analysis": {**analysis, **web}},
                     "api": {**app, "app": {**app["app"], "name": "api", "namespace": api_namespace}, "analysis": {**analysis, **api}}}}


@pytest.mark.parametrize(("web", "api", "namespace", "refused"), [
    ({"webhookName": "shop"}, {"webhookName": "shop"}, "shop", ["apps.web.analysis.webhookName", "apps.api.analysis.webhookName"]),
    ({"webhookName": "api"}, {}, "shop", ["apps.web.analysis.webhookName"]),  # the other app's own name
    ({"webhookName": "shop"}, {"webhookName": "shop"}, "other", []),  # gates are keyed by namespace too
    ({"webhookName": "shop"}, {"webhookName": "cart"}, "shop", []),
], ids=["same-name", "another-app-s-name", "other-namespace", "distinct"])
def test_two_apps_whose_hooks_would_be_sent_one_name_in_one_namespace_are_refused(web: dict[str, Any], api: dict[str, Any],
                                                                                  namespace: str, refused: list[str]) -> None:
    """A load tester keys gates on <name>.<namespace>: a gate opened for one app's release would open the other's."""
    from canary.core.spec import parse_stack
    from canary.errors import InvalidSpec

    values = _two_apps(web, api, namespace)
    if not refused:
        parse_stack(values)
        return
    with pytest.raises(InvalidSpec) as info:
        parse_stack(values)
    assert sorted(p.field for p in info.value.problems) == sorted(refused), info.value.problems
    assert all("give each app its own" in p.rule for p in info.value.problems)


def test_a_webhook_name_in_a_top_level_analysis_that_judges_every_app_is_refused() -> None:
    from canary.core.spec import parse_stack
    from canary.errors import InvalidSpec

    values = {"prometheus": {"address": "http://prometheus:9090"},
              "analysis": {"stepWeight": 10, "metrics": [{"name": "request-error-rate", "thresholdRange": {"max": 1}}], "webhookName": "shop"}}
    with pytest.raises(InvalidSpec) as info:
        parse_stack(values)
    (problem,) = info.value.problems
    assert problem.field == "analysis.webhookName" and "set it per app" in problem.rule, problem


@pytest.mark.parametrize("cmd", ["API_TOKEN=sk_live_S3CRETVALUE ./smoke.sh", "A=1 B=2 true"])
def test_a_command_hook_that_begins_with_a_variable_assignment_is_refused(cmd: str) -> None:
    # run without a shell, its first word was taken for the program: "`API_TOKEN=sk_live_…` could not start", the value
    # said in the journal, Events and chat alerts
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a variable assignment"):
        hook(name="smoke", type="pre-rollout", cmd=cmd)
    assert hook(name="smoke", type="pre-rollout", cmd="env A=1 true").cmd == "env A=1 true"
