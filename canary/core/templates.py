"""Metric query templates: which placeholders a template uses, and rendering them.

Placeholders are ``{{ target }}`` (the track judged: the canary Deployment, or
stable's when a metric is compared with stable), ``{{ stable }}`` (and Flagger's
``{{ primary }}``: the stable Deployment), ``{{ namespace }}``, ``{{ interval }}``,
``{{ podLabel }}`` and ``{{ namespaceLabel }}`` (the Prometheus labels holding
pod names and their namespace) and ``{{ variables.NAME }}``. Anything else is an
error, found when the spec is validated (``placeholders``), never first at
release time. Pure; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

#: the innermost two of a run of braces open one: a label placeholder first in a selector is ``x{{{ namespaceLabel }}="…"}``
_PLACEHOLDER = re.compile(r"\{\{(?!\{)(.*?)\}\}", re.S)
_NAME = re.compile(r"^(target|stable|primary|namespace|interval|podLabel|namespaceLabel|variables\.([A-Za-z_][A-Za-z0-9_-]*))$")
BUILTIN_PLACEHOLDERS = ("target", "stable", "primary", "namespace", "interval", "podLabel", "namespaceLabel")


@dataclass(frozen=True)
class Placeholders:
    """What a template refers to."""

    builtins: frozenset[str]
    variables: frozenset[str]


def placeholders(query: str) -> Placeholders:
    """The placeholders of a template; ValueError names the first that is not allowed."""
    if not query.strip():
        raise ValueError("must be a non-empty PromQL query")
    builtins: set[str] = set()
    variables: set[str] = set()
    for raw in _PLACEHOLDER.findall(query):
        name = raw.strip()
        match = _NAME.match(name)
        if match is None:
            raise ValueError(
                f"uses unknown placeholder {{{{ {name} }}}}; allowed: "
                "{{ target }}, {{ stable }}, {{ primary }}, {{ namespace }}, {{ interval }}, {{ podLabel }}, {{ namespaceLabel }}, "
                "{{ variables.NAME }}"
            )
        if match.group(2):
            variables.add(match.group(2))
        else:
            builtins.add(name)
    rest = _PLACEHOLDER.sub("", query)
    if "{{" in rest or "}}" in rest:
        raise ValueError("has an unclosed '{{' or a stray '}}'")
    _check_balanced(_PLACEHOLDER.sub("x", query))
    return Placeholders(frozenset(builtins), frozenset(variables))



def request_count_placeholders(query: str) -> Placeholders:
    """The placeholders of a request count (``prometheus.requestCount``); ValueError says why it cannot be one. It is
    rendered per track and per window as the metrics are, so it must select the track's pods (``{{ target }}``: else
    canary and stable read one count, and a canary no request reached would count stable's) over the window
    (``{{ interval }}``: else a held rate's grown window, or a judge's, would borrow another stretch's count); no
    metric's ``templateVariables`` reach it."""
    found = placeholders(query)
    if found.variables:
        raise ValueError(f"uses {{{{ variables.{sorted(found.variables)[0]} }}}}: a request count has no templateVariables; "
                         "write the value in")
    missing = [f"{{{{ {name} }}}}" for name in ("target", "interval") if name not in found.builtins]
    if missing:
        raise ValueError(f"must use {' and '.join(missing)}: it counts the requests one track's pods ({{{{ target }}}}: "
                         "the canary's Deployment, or stable's) answered in the window ({{ interval }}), as "
                         'sum(increase(http_requests_total{{{ namespaceLabel }}="{{ namespace }}",{{ podLabel }}=~"{{ target }}-.*"}[{{ interval }}])) '
                         'does')
    return found

def _lex(query: str) -> Iterator[tuple[str, str]]:
    """Each character of a PromQL query with where it stands: ``""`` in the expression, the quote of the string
    it is in (its closing quote too), ``"#"`` in a comment; then ``("", what is left open at the end)``.

    As PromQL reads it: a ``#`` outside a string starts a comment to the end of the line (its apostrophes and
    brackets are prose), and a backquoted string has no escapes.
    """
    quote: str | None = None
    escaped = comment = False
    for ch in query:
        if comment:
            yield ch, "#"
            comment = ch != "\n"
        elif quote:
            yield ch, quote
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "`":
                escaped = True
            elif ch == quote:
                quote = None
        else:
            yield ch, ""
            if ch == "#":
                comment = True
            elif ch in "\"'`":
                quote = ch
    yield "", quote or ("#" if comment else "")


def _check_balanced(query: str) -> None:
    """Reject the PromQL mistakes a template most often has: unbalanced brackets and quotes."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch, where in _lex(query):
        if not ch:  # the end
            if where not in ("", "#"):
                raise ValueError(f"is not valid PromQL: unterminated string starting with {where}")
        elif where:
            continue  # in a string or a comment
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            raise ValueError(f"is not valid PromQL: unbalanced '{ch}'")
    if stack:
        raise ValueError(f"is not valid PromQL: unclosed '{stack[-1]}'")


def variable_problems(query: str, variables: Mapping[str, str]) -> dict[str, str]:
    """Why a value of ``variables`` would change what the template means, by name. A placeholder inside a
    quoted string (``le="{{ variables.le }}"``) takes its value as that string's text: a quote in it would end
    the string, and the rest would be PromQL (``0.5"}[1m])) * 0 #`` passes any gate); a backslash must start one
    of PromQL's escapes (``\\d`` in a regex is written ``\\\\d``, or the template quotes with backquotes).
    Elsewhere, the query with the value in must still have its brackets and quotes balanced."""
    problems: dict[str, str] = {}
    sentinel = "\x00"

    def marking(name: str) -> Callable[[re.Match[str]], str]:
        return lambda m: sentinel if m.group(1).strip() == f"variables.{name}" else "x"

    for name, value in variables.items():
        marked = _PLACEHOLDER.sub(marking(name), query)
        if sentinel not in marked:
            continue
        for quote in _quotes_at(marked, sentinel):
            if quote == "`":
                if "`" in value:
                    problems[name] = "contains a backquote, which would end the backquoted string it stands in"
            elif quote == "#":
                if "\n" in value:
                    problems[name] = "contains a line break, which would end the comment it stands in: the rest would be PromQL"
            elif quote:
                problems.update({name: rule} if (rule := _string_problem(value, quote)) else {})
            else:
                try:
                    _check_balanced(marked.replace(sentinel, value))
                except ValueError as exc:
                    problems[name] = f"would make the query unbalanced: the template {exc}"
            if name in problems:
                break
    return problems


def _string_problem(value: str, quote: str) -> str | None:
    """Why ``value`` cannot stand as the text of a PromQL string in ``quote`` quotes (None: it can)."""
    own = re.escape(quote)
    escape = re.compile(rf"\\(?:[abfnrtv\\]|{own}|[0-7]{{3}}|x[0-9a-fA-F]{{2}}|u[0-9a-fA-F]{{4}}|U[0-9a-fA-F]{{8}})")
    at = 0
    while at < len(value):
        ch = value[at]
        if ch == "\\":
            found = escape.match(value, at)
            if found is None:
                if at + 1 == len(value):
                    return "ends with a lone backslash, which would escape the quote that ends the string it stands in"
                after = value[at + 1]
                return (f"contains \\{after}, which is no escape in a PromQL string in {quote} quotes: write \\\\{after} "
                        "(or quote the string with backquotes in the template)")
            at = found.end()
            continue
        if ch == quote:
            return f"contains an unescaped {quote}, which would end the quoted string it stands in (escape it as \\{quote})"
        if ch == "\n":
            return f"contains a line break, which a PromQL string in {quote} quotes cannot hold (write \\n)"
        at += 1
    return None


def _quotes_at(query: str, sentinel: str) -> list[str]:
    """Where each occurrence of ``sentinel`` stands, as ``_lex`` says: "" outside any string, its quote inside one,
    "#" in a comment."""
    return [where for ch, where in _lex(query) if ch == sentinel]


def render(query: str, *, target: str, namespace: str, interval: str, variables: Mapping[str, str], stable: str = "",
           pod_label: str = "kubernetes_pod_name", namespace_label: str = "namespace") -> str:
    """Substitute every placeholder; a missing variable is a KeyError naming it."""
    values = {"target": target, "stable": stable, "primary": stable, "namespace": namespace, "interval": interval, "podLabel": pod_label,
              "namespaceLabel": namespace_label}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name.startswith("variables."):
            key = name.removeprefix("variables.")
            if key not in variables:
                raise KeyError(f"template variable {key!r} has no value")
            return variables[key]
        if name not in values:
            raise KeyError(f"unknown placeholder {name!r}")
        return values[name]

    return _PLACEHOLDER.sub(substitute, query)
