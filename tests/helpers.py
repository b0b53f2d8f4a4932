"""Helpers shared by the unit tests of the core: mutations of plain config data, specs built from
the conftest's base values, a valid pod template. No fixtures, no I/O."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from canary.core.spec import ReleaseSpec, parse_spec
from canary.errors import InvalidSpec, Problem
from tests.conftest import base_values

Mutation = Callable[[dict[str, Any]], None]

#: The image of the conftest's base values (its stableImage).
BASE_IMAGE = "registry.example.com/shop/web:1.0.0"


def _walk(data: Any, parts: list[str]) -> Any:
    node = data
    for part in parts:
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def set_path(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (list indices as numbers) to ``value`` (a copy of it)."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = _walk(data, parents)
        node[int(last) if last.isdigit() else last] = copy.deepcopy(value)

    return mutate


def del_path(path: str) -> Mutation:
    """A mutation deleting the dotted path."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = _walk(data, parents)
        del node[int(last) if last.isdigit() else last]

    return mutate


def update(path: str, **values: Any) -> Mutation:
    """A mutation updating the mapping at ``path`` (empty: the top level) with ``values``."""

    def mutate(data: dict[str, Any]) -> None:
        _walk(data, path.split(".") if path else []).update(copy.deepcopy(values))

    return mutate


def chain(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


def values_with(*mutations: Mutation) -> dict[str, Any]:
    """The conftest's base values with ``mutations`` applied."""
    values = base_values()
    chain(*mutations)(values)
    return values


def spec_with(*mutations: Mutation) -> ReleaseSpec:
    """The base values, mutated, as a release spec."""
    return parse_spec(values_with(*mutations))


def problems(values: dict[str, Any]) -> tuple[Problem, ...]:
    """The problems ``parse_spec`` refuses ``values`` with (the values must be invalid)."""
    try:
        parse_spec(values)
    except InvalidSpec as exc:
        return exc.problems
    raise AssertionError("the values were accepted")


def pod_template(image: str = BASE_IMAGE, **container: Any) -> dict[str, Any]:
    """A valid pod template whose one container is named like the base app (web)."""
    main: dict[str, Any] = {"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}
    main.update(container)
    return {"metadata": {"labels": {"app": "web", "team": "shop"}}, "spec": {"containers": [main]}}
