"""Webhooks and alerts: call one (an HTTP POST or a local command), bounded by its timeout and by the cancel token.

An HTTP hook succeeds on a 200, 201 or 202 answer, as in Flagger (which fails
any status above 202), and a redirect is a no that is never followed; an alert
succeeds on any 2xx. A command hook succeeds on exit status 0, runs
in its own process group, and is killed whole when its timeout expires or the
release is cancelled; on Linux it also dies with canary's process however that
ends, a SIGKILL included (``processes.spawn``: the command, and what it started
in its group where libc has ``_Fork``, glibc 2.34 or musl 1.2.2 and later; with
an older glibc, the command alone); what it started in that group is killed
when it exits, and
its output is read until its deadline at most (a process that left the group
may hold the pipe), and its standard input is fed off the caller's thread (a body
larger than the pipe's buffer, to a command that never reads it, held the call
past its timeout and its cancel). What a success or a failure means for the
release is the release's business.

A result's detail goes everywhere (the journal, ``canary status``, Kubernetes
Events, event hooks, chat alerts), and a hook's URL or command line may carry
a token (``?token=``, ``user:pass@``, a Slack-style path; a Pulumi secret): a
result names the hook by its name and its URL's scheme, host and port only, or
its program's base name only, and every text it quotes (an answer, an error, a
command's output) is scrubbed of the URL's parts and of what of the command's
arguments may be a secret (one that reads as a token or is 16 characters or more, a
script whole, its URLs, any option's value, glued ``-pX`` or ``--name=X`` too, headers,
an assignment's value, the value of a JSON member named as a credential; in a script's words as well), never of a plain
positional word of it nor of a URL's host on its own; a value not named as a credential only where it stands as a word of
its own (``-n prod`` leaves ``production``).
Outputs are truncated in results; an alert's URL never appears in one.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import posixpath
import re
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, unquote_plus

from canary.adapters import http, processes
from canary.core import notify
from canary.core.records import HookResult
from canary.core.spec import Alert, Webhook


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the command has exited, without reaping it (its pid, its group's id, stays its own)."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return process.poll() is not None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


#: The command hooks started and not yet reaped, in every release of this process: killed whole when the
#: release's hooks are closed or the process exits (they run in sessions of their own, so a terminal's
#: signal or canary's end never reaches them: an event hook with a long timeout outlived the release).
_RUNNING: set[subprocess.Popen[bytes]] = set()
#: Reentrant: ``stop_all`` runs in a signal handler, on the main thread, maybe while that thread holds it.
_RUNNING_LOCK = threading.RLock()


def _stop(processes: set[subprocess.Popen[bytes]]) -> int:
    """Kill the whole group of each of ``processes`` not yet reaped (one that exited may have left what it
    started running in its group, and its id is still its own); how many there were."""
    with _RUNNING_LOCK:
        running = list(processes)
    for process in running:
        _exited(process)  # never reaps; tells a command another reaped (its id may be another's now)
        if process.returncode is None:
            _kill_group(process)
    return len(running)


def stop_all() -> int:
    """Kill every command hook of this process still running, whole groups, at once: for a stop that ends
    the process before ``atexit`` runs (canary's second signal), since each runs in a session of its own that
    nothing else reaches. Safe in a signal handler."""
    return _stop(_RUNNING)


atexit.register(stop_all)


def _feed(process: subprocess.Popen[bytes], data: bytes) -> None:
    """Write ``data`` to the command's standard input, then close it: on a thread of its own, a chunk at a
    time as the pipe takes it, giving up once the command has exited (a body larger than the pipe's buffer,
    written at once, blocked until a command that never reads it exited, whatever its timeout or the cancel
    token said). A command that exits without reading it all is no error."""
    assert process.stdin is not None
    with contextlib.suppress(OSError, ValueError), process.stdin:
        fd = process.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view and not _exited(process):
            select.select([], [fd], [], 0.05)
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view):]


def _read_all(pipe: Any, chunks: list[bytes]) -> None:
    """Read the command's output to its end, then close it: here, on the reader's thread, because a
    process that left the group may hold the pipe open after the call returned, and closing it from
    another thread would wait for this read."""
    with pipe:
        chunks.append(pipe.read())


#: What a command hook never inherits (the stack's passphrase, the backend's and Prometheus' tokens): its
#: output's tail reaches the journal, so none of these may be printed into it.
SECRET_VARIABLES = frozenset({
    "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_ACCESS_TOKEN", "CANARY_PROMETHEUS_TOKEN",
})


def _redacted(text: str) -> str:
    """``text`` with the value of every secret variable of this process masked (a hook may know one anyway)."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


#: The shortest part of a URL or argument scrubbed from a text (as ``_redacted``'s): a shorter one would
#: mask ordinary words, and is no token.
_SHORTEST_SECRET = 4


def _words(cmd: str) -> list[str]:
    """``cmd`` split as it is run; one that cannot be (never started) at its blanks."""
    try:
        return shlex.split(cmd)
    except ValueError:
        return cmd.split()


def _program(cmd: str) -> str:
    """The base name of the program ``cmd`` runs: its directory and its arguments may name a token."""
    words = _words(cmd)
    return (posixpath.basename(words[0]) if words else "") or "?"


def _label(hook: Webhook) -> str:
    """How a result names ``hook``: its name, and its URL's origin or its program (``…`` for its arguments)."""
    if hook.url:
        return f"{hook.name}: POST {http.origin(hook.url)}"
    cmd = hook.cmd or ""
    return f"{hook.name}: `{_program(cmd)}{' …' if len(_words(cmd)) > 1 else ''}`"


#: A URL inside a word (a script's, an option's value).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
#: ``k=v`` as an option or an environment takes it: ``--token=X``, ``TOKEN=X``.
_ASSIGNMENT = re.compile(r"(-{0,2}[A-Za-z_][\w.-]*)=(.+)", re.DOTALL)
#: ``"name": "value"``, as a JSON body names a credential (``curl -d '{"password":"…"}'``)
_MEMBER = re.compile(r'"([A-Za-z_][\w.-]*)"\s*:\s*"((?:[^"\\]|\\.)*)"')
#: ``Name: value``, as curl, wget and hey take a header.
_HEADER = re.compile(r"([A-Za-z][\w-]*):\s+(\S.*)", re.DOTALL)
#: the options whose next word is a header, whatever its name: ``-H``, ``-sH`` (short flags together), ``--header``,
#: ``--proxy-header``, vegeta's ``-header``
_HEADER_OPTION = re.compile(r"-[A-Za-z]*H|-{1,2}(?:proxy-)?header")
#: in a name (an option's, a variable's, a header's), what says its value is a credential: ``--token``, ``--api-key``,
#: ``PASSWORD``, ``Authorization``, ``X-Auth-Token``; and the names' words that do (``JWT``, ``GITHUB_PAT``, ``X-Signature``,
#: ``--db-pw``, ``DB_PWD``)
_CREDENTIAL_PART = re.compile(r"token|secret|pass|key|auth|cred", re.IGNORECASE)
_CREDENTIAL_WORDS = frozenset({"jwt", "bearer", "session", "sig", "signature", "pat", "cookie", "sid", "pw", "pwd"})
#: options whose next word is ``user:password`` (curl's, wget's): the password, and the user when there is no password
#: (``-u sk_live_…:``: an API key given as the user)
_USER_OPTIONS = frozenset({"-u", "--user", "-U", "--proxy-user", "--http-user"})
#: How deep a script's words are split again (``sh -c "bash -c '…'"``).
_NESTING = 3


def _script_words(text: str) -> list[str]:
    """``text`` split as a shell splits a script: at blanks and at ``;``, ``|``, ``&&`` (a URL before
    ``;`` is quoted without it); at its blanks when it cannot be."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return text.split()


def _credential(name: str) -> bool:
    """Whether ``name`` (``--api-key``, ``TOKEN``, ``X-Gate-Signature``, ``GITHUB_PAT``) names a credential."""
    bare = name.lstrip("-")
    return bool(_CREDENTIAL_PART.search(bare)) or any(part.lower() in _CREDENTIAL_WORDS for part in re.split(r"[-_.]", bare))


def _embedded_url_parts(url: str) -> set[str]:
    """What of a URL inside a script may be a secret: the URL whole, its user and password, its query and each of
    its values, its fragment, and its path segments that read as tokens (a Slack-style hook's)."""
    # a malformed one (no parts) was never sent: it can be quoted whole only
    return {url, *(http.url_parts(url, lambda path: [s for s in path.split("/") if http.opaque(s)]) or ())}


def _words_secrets(words: list[str], depth: int = 0) -> set[str]:
    """What inside a command's arguments may be a secret. A script (``sh -c '…'``, as an imported load tester
    runs it) is one argument, and what it runs quotes a URL, an option's value or a header of it, never the
    script whole: each URL's parts (``_embedded_url_parts``), the value of a credential's ``k=v``, header
    (and its last word: a ``Bearer`` token) or JSON member (``{"password":"…"}``), any header given to ``-H``, the word after an option that names a
    credential, the password of ``-u user:password``; in a script's words too. Nothing else is taken (a
    script's own ``error: …`` is said whole)."""
    found: set[str] = set()
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        for url in _URL.findall(word):
            found |= _embedded_url_parts(url)
        if depth >= _NESTING:
            continue
        header, assignment = _HEADER.fullmatch(word), _ASSIGNMENT.fullmatch(word)
        if header is not None and (_HEADER_OPTION.fullmatch(before) or _credential(header.group(1))):
            value = header.group(2).strip()
            # the value, its last word (a Bearer token), and each of its k=v values (a Cookie's session=…)
            found |= {value, value.split()[-1], *(v.strip() for part in value.split(";") for _, _, v in [part.partition("=")] if v)}
        elif assignment is not None:
            name, value = assignment.groups()
            if _HEADER_OPTION.fullmatch(name):  # --header=Authorization: …
                found |= _words_secrets(["-H", value], depth + 1)
            elif _credential(name):
                found.add(value)
        found |= {value for name, value in _MEMBER.findall(word) if _credential(name)}
        if before.startswith("-") and "=" not in before and _credential(before) and not word.startswith("-"):  # --token=X: X is its value
            found.add(word)
        if before in _USER_OPTIONS:
            user, colon, password = word.partition(":")
            found.add(password if password else user)
        if any(c in word for c in " \t\n;|&"):
            found |= _words_secrets(_script_words(word), depth + 1)
    return found


#: Where a command's argument is cut into pieces, each of which may read as a token: a path's, a host's, ``user:key``'s,
#: a quoted or bracketed value's (``{"password":"…"}``: a piece kept its quotes, and the bare value was never masked).
_PIECES = re.compile(r"[/.:@,=\"'{}\[\]()]+")
#: A URL's host and port (after its user info, whose password may hold an ``@``), left out of its argument's pieces: a
#: host is no secret (an HTTP hook's result names it) and a command's errors say it (``Could not resolve host: …``),
#: where a long label of it (``flagger-loadtester``) was masked for its length. Its other parts are cut as before.
_URL_HOST = re.compile(r"(://(?:[^/?#\s'\"<>]*@)?)[^/?#\s'\"<>]*")
#: A short option with its value glued to it (``-pwinter``, mysql's password; ``-uroot``); ``-sSL`` (flags together)
#: leaves a value too short to be taken.
_GLUED = re.compile(r"(-[A-Za-z])(.{3,})", re.DOTALL)


def _option(word: str) -> bool:
    """Whether ``word`` is an option that may take the next word as its value (``-a``, ``--db-pw``; not ``--db-pw=X``,
    whose value it holds, nor ``-`` or ``--``)."""
    return word.startswith("-") and word not in ("-", "--") and "=" not in word


def _argument_secrets(words: list[str], depth: int = 0) -> tuple[set[str], set[tuple[str, str]]]:
    """What of a command's own arguments may be a secret besides what ``_words_secrets`` reads in them, and apart the
    values masked as words of their own only (``_word_pattern``: with the short option they are glued to, or ``""``).
    Taken: a script (an argument with a blank) whole; the value of any option, whatever its name (``-a X``, ``-p X``,
    ``-pX``, ``--db-pw=X``: a tool's password option may be any letter), and of any ``k=v``; each piece of an argument
    that reads as a token (``tok-S3CRET-ARG``, ``s3cr3t99`` of ``user:s3cr3t99``, any of 16 characters or more: a
    lowercase key, ``correct-horse-battery-staple``), a URL's host left whole (``_URL_HOST``). The same in a script's
    words (a token in it was masked only where the script was printed whole), but what it quotes (``echo "Status:
    rollout blocked"``) is neither taken whole nor cut into pieces (``Status`` reads as a token). The value of an option
    or ``k=v`` not named as a credential is a word of its own only: replaced wherever it appeared, ``-n prod`` made
    ``production`` read ``***uction``, ``-X POST`` ``***ED``. A positional plain word stays (``deployment``, a host name:
    every argument taken whole, a failure's output read ``deployment ***``), and so does a value shorter than a token
    (``-c 8``, ``_SHORTEST_SECRET``)."""
    found: set[str] = set()
    word_values: set[tuple[str, str]] = set()
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        assignment, glued = _ASSIGNMENT.fullmatch(word), _GLUED.fullmatch(word)
        if any(c.isspace() for c in word) and not depth:
            found.add(word)
        if assignment is not None:
            name, value = assignment.groups()
            if _credential(name):
                found.add(value)
            else:
                word_values.add(("", value))
        elif glued is not None:
            word_values.add((glued.group(1), glued.group(2)))
        # -u's user:password: only the password (``_words_secrets``), the user is said
        if _option(before) and before not in _USER_OPTIONS and not word.startswith("-"):
            if _credential(before):
                found.add(word)
            else:
                word_values.add(("", word))
        if depth <= 1 and not any(c.isspace() for c in word):
            found.update(piece for piece in _PIECES.split(_URL_HOST.sub(r"\1", word.lstrip("-"))) if http.opaque(piece))
        if depth < _NESTING and any(c in word for c in " \t\n;|&"):
            inner, inner_values = _argument_secrets(_script_words(word), depth + 1)
            found |= inner
            word_values |= inner_values
    return found, word_values


def _word_pattern(value: str, option: str = "") -> re.Pattern[str]:
    """Where an option's value is read as a secret: as a word of its own (``Access denied: winter``, ``password=winter``,
    ``namespace prod``) or after the short option it is glued to (``-pwinter``), not inside another word (``Duration``
    for ``-duration``, ``production`` for ``-n prod``, ``latest`` for ``--namespace test``, ``10000`` for ``-n 1000``)."""
    glued = rf"(?<={re.escape(option)})|" if option else ""
    return re.compile(rf"(?:{glued}(?<![A-Za-z0-9])){re.escape(value)}(?![A-Za-z0-9])")


def _secrets(hook: Webhook) -> list[str | re.Pattern[str]]:
    """What of ``hook`` may be a secret, longest first: the whole URL and each of its parts (raw and
    decoded: an error may quote either), or the whole command line, what of its arguments may be one
    (``_argument_secrets``, ``_words_secrets``) and the program's directory, and the values masked as words of
    their own only (``_word_pattern``): a longer one first, whose mask then covers a shorter one inside it."""
    found: set[str] = set()
    word_values: set[tuple[str, str]] = set()
    if hook.url:
        found |= {hook.url, *(http.url_parts(hook.url) or ())}  # malformed: never sent, quoted whole only
    if hook.cmd:
        found.add(hook.cmd)
        words = _words(hook.cmd)
        arguments, word_values = _argument_secrets(words[1:])
        found |= arguments | _words_secrets(words[1:])
        if words:
            found.add(posixpath.dirname(words[0]))
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    values = {(option, v) for option, value in word_values for v in (value, unquote(value), unquote_plus(value)) if len(v) >= _SHORTEST_SECRET}
    secrets = [*((s, s) for s in found if len(s) >= _SHORTEST_SECRET), *((value, _word_pattern(value, option)) for option, value in values)]
    return [secret for _, secret in sorted(secrets, key=lambda s: len(s[0]), reverse=True)]


def _scrubbed(text: str, secrets: Iterable[str | re.Pattern[str]]) -> str:
    """``text`` (an answer, an error's message, a command's output) with every one of ``secrets`` masked (a pattern
    where it matches), and the value of every secret variable of this process."""
    for secret in secrets:
        text = secret.sub("***", text) if isinstance(secret, re.Pattern) else text.replace(secret, "***")
    return _redacted(text)


#: The answers a hook says yes with: Flagger's (it fails any status above 202).
YES = frozenset({200, 201, 202})


def _judged(answer: http.Answer) -> tuple[bool, str]:
    """A hook's answer as a yes or a no, and how to say it."""
    if answer.location:
        return False, f"{answer.detail}, a redirect to {answer.location}, not followed: a hook must answer itself"
    if 200 <= answer.status < 300 and answer.status not in YES:
        return False, f"{answer.detail}: only 200, 201 and 202 are a yes (as in Flagger)"
    return answer.status in YES, answer.detail


class Caller:
    """The ``HookCaller`` port over HTTP and local commands."""

    def __init__(self) -> None:
        self._started: set[subprocess.Popen[bytes]] = set()  # this caller's commands not yet reaped

    def stop_running(self) -> int:
        """Kill this caller's command hooks still running (a release's, at its end)."""
        return _stop(self._started)

    def _reaped(self, process: subprocess.Popen[bytes]) -> None:
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
            self._started.discard(process)

    def call(self, hook: Webhook, body: Mapping[str, Any], cancel: threading.Event | None = None) -> HookResult:
        start = time.monotonic()
        timeout = hook.timeout.total_seconds()

        def result(ok: bool, what: str) -> HookResult:
            return HookResult(hook.name, hook.type.value, ok, time.monotonic() - start, f"{_label(hook)} {_scrubbed(what, _secrets(hook))}")

        if hook.url:
            outcome = http.within(lambda: http.post_json(hook.url, body, timeout), timeout, cancel, "canary-webhook")  # type: ignore[arg-type]
            if outcome.cancelled:
                return result(False, "abandoned: the release was cancelled")
            if outcome.late:
                return result(False, f"timed out after {timeout:g}s (the answer had not all arrived) and was abandoned")
            if outcome.failure:
                return result(False, f"failed: {outcome.failure}")
            return result(*_judged(outcome.value))
        try:
            process = self.start(hook, body)
        except (OSError, ValueError) as exc:
            return result(False, f"could not start: {exc}")
        return self.finish(hook, process, start + timeout, cancel, start)

    def start(self, hook: Webhook, body: Mapping[str, Any] | None = None) -> subprocess.Popen[bytes]:
        """Start the command in a session of its own; ``body`` (what an HTTP hook would be sent: the
        release, its phase, an event's message) on its standard input, fed from a thread of its own. Raises
        OSError or ValueError when it cannot start, naming the program's base name only (Python's own
        message quotes the path given, a split error may quote the line)."""
        assert hook.cmd is not None
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
        env.update(CANARY_WEBHOOK=hook.name, CANARY_WEBHOOK_TYPE=hook.type.value)
        try:
            process = processes.spawn(shlex.split(hook.cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.PIPE if body is not None else subprocess.DEVNULL, start_new_session=True, env=env)
        except OSError as exc:
            why = _scrubbed(exc.strerror or type(exc).__name__, _secrets(hook))
            raise (OSError(exc.errno, why, _program(hook.cmd)) if exc.errno else OSError(f"{why}: {_program(hook.cmd)}")) from exc
        except ValueError as exc:
            raise ValueError(f"cannot be split into a command line: {_scrubbed(str(exc), _secrets(hook))}") from exc
        with _RUNNING_LOCK:
            _RUNNING.add(process)
            self._started.add(process)
        if process.stdin is not None:
            threading.Thread(target=_feed, args=(process, json.dumps(body, default=str).encode()), name="canary-hook-stdin", daemon=True).start()
        return process

    def finish(self, hook: Webhook, handle: Any, deadline: float, cancel: threading.Event | None = None, start: float | None = None) -> HookResult:
        """Wait for a started command until ``deadline`` (monotonic) or the cancel token, then kill its process group."""
        process: subprocess.Popen[bytes] = handle
        start = start if start is not None else time.monotonic()
        out = b""
        reader = threading.Thread(target=lambda: None)
        chunks: list[bytes] = []
        if process.stdout is not None:
            reader = threading.Thread(target=_read_all, args=(process.stdout, chunks), daemon=True)
            reader.start()
        while not _exited(process):
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                _kill_group(process)
                process.wait()
                self._reaped(process)
                reader.join(1)
                if cancel is not None and cancel.is_set():
                    why = "was cancelled with the release"
                elif hook.background:
                    why = "ran until the interval's end"
                else:
                    why = f"timed out after {hook.timeout.total_seconds():g}s"
                return HookResult(hook.name, hook.type.value, False, time.monotonic() - start, f"{_label(hook)} {why} and was killed")
            time.sleep(0.02)
        # what it started in the background dies with it (a load generator left running, holding the
        # output pipe); killed before the command is reaped, so the group's id cannot be another's yet
        _kill_group(process)
        process.wait()
        self._reaped(process)
        reader.join(max(0.5, deadline - time.monotonic()))
        out = b"".join(chunks)
        tail = _scrubbed(out.decode(errors="replace"), _secrets(hook)).strip().splitlines()[-3:]
        ok = process.returncode == 0
        detail = f"{_label(hook)} exited {process.returncode}" + (f": {' | '.join(tail)[:300]}" if tail and not ok else "")
        return HookResult(hook.name, hook.type.value, ok, time.monotonic() - start, detail)

    def alert(self, alert: Alert, body: Mapping[str, Any]) -> HookResult:
        """One chat message, bounded by the alert's timeout as a whole (a server that trickles its answer held the
        queue every receiver shares, and the release's last messages were dropped at its end)."""
        start = time.monotonic()
        timeout = alert.timeout.total_seconds()
        outcome = http.within(lambda: http.post_json(notify.address(alert), body, timeout), timeout, name="canary-alert")
        kind = f"alert:{alert.type.value}"
        if outcome.late:
            return HookResult(alert.name, kind, False, time.monotonic() - start,
                              f"{alert.type.value} alert timed out after {timeout:g}s (the answer had not all arrived) and was abandoned")
        if outcome.failure:
            return HookResult(alert.name, kind, False, time.monotonic() - start, f"{alert.type.value} alert failed: {outcome.failure}")
        answer = outcome.value
        return HookResult(alert.name, kind, 200 <= answer.status < 300, time.monotonic() - start,
                          f"{alert.type.value} alert {answer.detail}" + (" (a redirect, not followed)" if answer.location else ""))
