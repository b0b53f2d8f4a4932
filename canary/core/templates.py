"""Metric query templates: which placeholders a template uses, and rendering them.

Placeholders are ``{{ target }}`` (the track judged: the canary Deployment, or
stable's when a metric is compared with stable), ``{{ stable }}`` (and Flagger's
``{{ primary }}``: the stable Deployment), ``{{ namespace }}``, ``{{ interval }}``,
``{{ podLabel }}`` (the Prometheus label holding pod names) and
``{{ variables.NAME }}``. Anything else is an error, found when the spec is
validated (``placeholders``), never first at release time. Pure; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_NAME = re.compile(r"^(target|stable|primary|namespace|interval|podLabel|variables\.([A-Za-z_][A-Za-z0-9_-]*))$")
BUILTIN_PLACEHOLDERS = ("target", "stable", "primary", "namespace", "interval", "podLabel")


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
                "{{ target }}, {{ stable }}, {{ primary }}, {{ namespace }}, {{ interval }}, {{ podLabel }}, {{ variables.NAME }}"
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


def _check_balanced(query: str) -> None:
    """Reject the PromQL mistakes a template most often has: unbalanced brackets and quotes.

    As PromQL reads it: a ``#`` outside a string starts a comment to the end of the line (its
    apostrophes and brackets are prose), and a backquoted string has no escapes.
    """
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    comment = False
    for ch in query:
        if comment:
            comment = ch != "\n"
            continue
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "`":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == "#":
            comment = True
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            raise ValueError(f"is not valid PromQL: unbalanced '{ch}'")
    if quote:
        raise ValueError(f"is not valid PromQL: unterminated string starting with {quote}")
    if stack:
        raise ValueError(f"is not valid PromQL: unclosed '{stack[-1]}'")


def render(query: str, *, target: str, namespace: str, interval: str, variables: Mapping[str, str], stable: str = "",
           pod_label: str = "kubernetes_pod_name") -> str:
    """Substitute every placeholder; a missing variable is a KeyError naming it."""
    values = {"target": target, "stable": stable, "primary": stable, "namespace": namespace, "interval": interval, "podLabel": pod_label}

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
