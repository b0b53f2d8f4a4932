"""HTTP clients' calls: the only module that imports requests.

A JSON POST bounded by its timeout (webhooks, chat alerts) and a GET that
only asks "does it answer" (the lab's health checks). Failures are answers
(status code, or the kind of failure), never exceptions. A POST never follows
a redirect: the receiver asked must answer itself (followed, a gate's 302 to a
login page answered 200, and a 307 re-posted the body to whatever host it named). ``private_session``
is a session for a client whose headers carry secrets (Prometheus' token and
headers): they go to their own origin only, never along a redirect elsewhere.
``within`` bounds a call as a whole: a client's timeout bounds each read, and a
server that trickles its answer outlasts it. ``origin`` names a URL, and
``url_parts`` reads what it carries beyond the origin, for the callers that
scrub it from what they say (each choosing which parts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import requests


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer
    detail: str
    #: a redirect's target, host and port only (its path, query and user may carry secrets); "" if none
    location: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a call run by ``within`` ended: what it returned, or the type of what it raised, or neither (``late``:
    it outran its bound; ``cancelled``: the cancel token was set first)."""

    value: Any = None
    failure: str = ""  # the type's name only: a message may quote the URL, and a kept exception's traceback holds
    late: bool = False  # the call's frames (its socket among them) until some later collection lets them go
    cancelled: bool = False


def within(call: Callable[[], Any], timeout: float, cancel: threading.Event | None = None, name: str = "canary-call") -> Outcome:
    """Run ``call`` on a thread of its own and wait for it ``timeout`` and a second's grace at most, or until
    ``cancel`` is set: either way a call still running is abandoned (the thread is a daemon). Anything it raises
    is its outcome (any BaseException: a thread's SystemExit would otherwise leave nothing behind)."""
    box: list[Outcome] = []

    def run() -> None:
        try:
            box.append(Outcome(value=call()))
        except BaseException as exc:  # noqa: BLE001 - reported as the call's outcome, never raised on a thread nobody joins
            box.append(Outcome(failure=type(exc).__name__))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout + 1
    while thread.is_alive():
        if cancel is not None and cancel.is_set():
            return Outcome(cancelled=True)
        if time.monotonic() >= deadline:
            return Outcome(late=True)
        thread.join(0.05 if cancel is not None else max(0.0, deadline - time.monotonic()))
    return box[0] if box else Outcome(late=True)


def _host(url: str, location: str) -> str:
    try:
        target = urlsplit(urljoin(url, location))
        return f"{target.hostname}:{target.port}" if target.port else target.hostname or ""
    except ValueError:
        return ""


def origin(url: str) -> str:
    """``url``'s scheme, host and port only, to name it: its user, password, path, query and fragment may carry a token."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(a malformed URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def url_parts(url: str, path: Callable[[str], Iterable[str]] | None = None, least_value: int = 0) -> set[str] | None:
    """What ``url`` carries beyond its origin, each part of which may be a secret, as given: its user info (whole, the
    user, the password), its query, its query's values of at least ``least_value`` characters (a short one, ``orgId=1``,
    scrubbed would take every "1" of a text with it), its fragment, and what ``path`` takes of its path (None: the path
    and each of its segments). None: ``url`` is malformed (the caller never shows it, or only whole)."""
    try:
        parts = urlsplit(url)
        found = {parts.netloc.rpartition("@")[0], parts.username or "", parts.password or "", parts.query, parts.fragment,
                 *(value for _, value in parse_qsl(parts.query) if len(value) >= least_value)}
    except ValueError:
        return None
    return found | set(path(parts.path) if path is not None else [parts.path, *parts.path.split("/")])


def opaque(segment: str) -> bool:
    """A URL's path segment that reads as a token rather than a word (``s3cr3t``, ``T0123ABC``, ``QwErTyUiOpAs``, a long
    random string): a script's ``/api/approvals/check`` is said in its own messages, and masking ``check`` hid them."""
    mixed = any(c.isdigit() for c in segment) or (any(c.isupper() for c in segment) and any(c.islower() for c in segment))
    return len(segment) >= 16 or (len(segment) >= 6 and mixed and any(c.isalpha() for c in segment))


def post_json(url: str, body: Mapping[str, Any], timeout: float, headers: Mapping[str, str] | None = None) -> Answer:
    """POST ``body`` as JSON; the answer's status, or 0 with why there was none."""
    try:
        response = requests.post(url, json=dict(body), timeout=timeout, headers=dict(headers or {}), allow_redirects=False)
    except requests.Timeout:
        return Answer(0, f"timed out after {timeout:g}s")
    except Exception as exc:  # noqa: BLE001 - a malformed URL raises the transport's own error, past requests' tree
        return Answer(0, f"failed: {type(exc).__name__}")  # the name only: a message may quote the URL
    location = response.headers.get("Location", "") if response.is_redirect else ""
    return Answer(response.status_code, f"answered {response.status_code}", _host(url, location) if location else "")


def get_ok(url: str, timeout: float = 1.0, **kwargs: Any) -> bool:
    """The URL answers with a status below 500."""
    try:
        return requests.get(url, timeout=timeout, **kwargs).status_code < 500
    except requests.RequestException:
        return False


def get(url: str, timeout: float = 2.0, **kwargs: Any) -> tuple[int, str]:
    try:
        response = requests.get(url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        return 0, type(exc).__name__
    return response.status_code, response.text


class _OwnOrigin(requests.Session):
    """A redirect to another host, scheme or port drops every header named private, as requests itself
    drops ``Authorization`` (and nothing else: a tenant or API-key header went along)."""

    def __init__(self, private: Iterable[str]) -> None:
        super().__init__()
        self._private = {name.lower() for name in private}

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in [n for n in prepared_request.headers if n.lower() in self._private]:
                del prepared_request.headers[name]
        super().rebuild_auth(prepared_request, response)


def private_session(headers: Iterable[str]) -> Any:
    """A session (requests') whose ``headers`` are sent to the origin asked, never to a host it redirects to."""
    return _OwnOrigin(headers)
