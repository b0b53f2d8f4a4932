"""Stack config in and out: one spec, whichever way the config arrives. Pure; no I/O.

The same ``StackSpec`` loads from (1) the Pulumi program's config, (2) the
Automation API's config map and (3) a stack file read by the stack-file
adapter. This module translates those shapes into plain values for
``spec.parse_stack``, checks that what must be a Pulumi secret is one, and turns
a spec back into stack config (for ``import-flagger``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from canary.core.naming import CONFIG_NAMESPACE
from canary.core.spec import CONFIG_KEYS, ENCRYPTED, Prometheus, StackSpec, parse_stack
from canary.errors import InvalidSpec, Problem


def _plain(value: Any) -> Any:
    """A config value as plain data: JSON strings of objects decoded, ConfigValue unwrapped."""
    if hasattr(value, "value") and hasattr(value, "secret"):
        value = value.value
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def values_from_config(config: Mapping[str, Any], namespace: str = CONFIG_NAMESPACE) -> dict[str, Any]:
    """Top-level spec values from a config map keyed ``namespace:key`` (other namespaces ignored)."""
    values: dict[str, Any] = {}
    for full_key, raw in config.items():
        ns, _, key = full_key.partition(":")
        if not key:
            ns, key = namespace, full_key
        if ns == namespace:
            values[key] = _plain(raw)
    return values


def from_config(config: Mapping[str, Any], source: str = "stack config", stack_file: Mapping[str, Any] | None = None) -> StackSpec:
    """Validate an Automation API config map or a Pulumi program's raw config.

    Both say only which top-level keys hold a secret somewhere (``canary:prometheus`` with its token set
    ``--secret --path``), not which values: ``stack_file``, the stack file's config as read with its
    secrets still encrypted, is where a plain header beside that encrypted token shows."""
    values = values_from_config(config)
    secret_keys = {k.partition(":")[2] for k, v in config.items() if getattr(v, "secret", False)}
    problems = unencrypted_secrets(values, secret_keys)
    if stack_file is not None:
        # the program cannot tell which file the engine read (`pulumi up --config-file other.yaml`): the stack
        # file speaks for a value only where its plain text is what the engine gave
        said = {p.field for p in problems}
        in_file = values_from_config(stack_file)
        given = {path: value for _, path, value in _secret_paths(values)}
        read = {path: value for _, path, value in _secret_paths(in_file)}
        problems += [p for p in unencrypted_secrets(in_file, None)
                     if p.field not in said and _plain_agrees(read.get(p.field), given.get(p.field))]
    try:
        return _parsed(values, source, problems)
    except InvalidSpec as exc:
        # a key held as a Pulumi secret shows no value of its own in a problem, whatever field the rule is about
        # (an unknown key `canary:dbPassword` set --secret was refused quoting the password); the secrets' own say none
        hidden = [Problem(p.field, "<secret>" if p.value != "nothing" else p.value, _scrubbed(p.rule, _at(values, p.field)))
                  if _top(p.field) in secret_keys and p not in problems else p for p in exc.problems]
        raise InvalidSpec(hidden, exc.source) from None


def _parsed(values: Mapping[str, Any], source: str, secrets: list[Problem], unchecked: tuple[str, ...] = ()) -> StackSpec:
    """``parse_stack``'s spec, or every problem at once: ``secrets`` (values that must be Pulumi secrets and are stored
    in plain text) with parse_stack's own, so that a plain token no longer hides the rest of the file. A problem of
    parse_stack's never quotes such a value: any text of it in a problem is taken out."""
    plain = [value for _, path, value in _secret_paths(values) if path in {p.field for p in secrets}]
    try:
        spec = parse_stack(values, source, unchecked)
    except InvalidSpec as exc:
        found = [Problem(p.field, _scrubbed(p.value, plain), _scrubbed(p.rule, plain)) for p in exc.problems]
        raise InvalidSpec([*secrets, *found], exc.source) from None
    if secrets:
        raise InvalidSpec(secrets, source)
    return spec


def _at(values: Mapping[str, Any], field: str) -> Any:
    """The value a problem's field names (``analysis.match[0].headers.x-token``), as deep as it can be followed."""
    node: Any = values
    for part in re.findall(r"[^.\[\]]+", field.removeprefix(f"{CONFIG_NAMESPACE}:")):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            break
    return node


def _scrubbed(rule: str, secret: Any) -> str:
    """``rule`` without the text of any string of the value it is about, under a key held as a secret: some rules
    quote it (a header's exact value, a regex). Which leaf of the key is the secret one the config does not say
    (a secret leaf makes its whole key secret), so every one of three characters or more is taken out."""
    leaves: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            leaves.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(secret)
    for leaf in sorted(set(leaves), key=len, reverse=True):
        for form in {leaf, repr(leaf)[1:-1]}:
            if len(form) >= 3:
                rule = rule.replace(form, "<secret>")
    return rule


def _top(field: str) -> str:
    """The top-level key a problem's field is under: ``prometheus`` of ``prometheus.headers.X``."""
    return re.split(r"[.\[]", field.removeprefix(f"{CONFIG_NAMESPACE}:"), maxsplit=1)[0]


def from_file_values(config: Mapping[str, Any], source: str) -> StackSpec:
    """Validate the ``config:`` map of a stack file read with its secrets still encrypted, for a command
    that uses what it reads: a key that is a secret as a whole cannot be read, and is refused saying so."""
    values = values_from_config(config)
    whole = whole_secrets(values)
    problems = unencrypted_secrets(values, None)
    problems += [Problem(key, "<secret>", f"is a secret as a whole, which this command cannot read without decrypting: {keep_fields_secret(key)}")
                 for key in whole]
    return _parsed(_without(values, whole), source, problems, whole)


def check_file_values(config: Mapping[str, Any], source: str) -> tuple[StackSpec, tuple[str, ...]]:
    """Validate a stack file's ``config:`` map as ``from_file_values`` does, for ``canary validate``; a key that
    is a secret as a whole (``pulumi config set --secret canary:prometheus '{…}'``) is left unchecked and
    returned, not refused: ``canary up`` decrypts and checks it before anything is applied, so refusing it
    here would refuse what up accepts, and calling it valid would claim what was not checked."""
    values = values_from_config(config)
    whole = whole_secrets(values)
    return _parsed(_without(values, whole), source, unencrypted_secrets(values, None), whole), whole


def _without(values: Mapping[str, Any], whole: tuple[str, ...]) -> dict[str, Any]:
    """``values`` without the keys that are secrets as a whole (unread: parse_stack is told they are ``unchecked``)."""
    rest: dict[str, Any] = {key: value for key, value in values.items() if key not in whole}
    if "prometheus" in whole:
        # stands in for it: the rules that only need a Prometheus to be there (built-in metrics) hold. No field is
        # marked given: what the secret holds (its scrape interval) is unknown, and the rules that need it are left to up
        rest["prometheus"] = Prometheus.model_construct(_fields_set=set(), address=ENCRYPTED)
    return rest


def whole_secrets(values: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level keys whose whole value is one Pulumi secret (still encrypted)."""
    return tuple(key for key, value in values.items() if key in CONFIG_KEYS and value == ENCRYPTED)


def keep_fields_secret(key: str) -> str:
    """How to store ``key`` so that its stack file can be checked without decrypting it."""
    return (f"keep only its secret fields secret: pulumi config rm {CONFIG_NAMESPACE}:{key}, then pulumi config set --path "
            f"{CONFIG_NAMESPACE}:{key}.<field> … for each field (with --secret for a token, a header or a URL)")


def _secret_paths(values: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(top-level key, path for a message, value) of every value that must be a Pulumi secret."""
    prometheus = values.get("prometheus")
    if isinstance(prometheus, Mapping):
        for leaf in ("token", "headers"):
            if leaf in prometheus:
                yield "prometheus", f"prometheus.{leaf}", prometheus[leaf]
    apps: list[tuple[str, str, Any]] = [("app", "", values), ("analysis", "", values)]
    if isinstance(values.get("apps"), Mapping):
        apps += [("apps", f"apps.{name}.", config) for name, config in values["apps"].items() if isinstance(config, Mapping)]
    for top, prefix, holder in apps:
        app = holder.get("app") if isinstance(holder, Mapping) else None
        if top != "analysis" and isinstance(app, Mapping) and isinstance(app.get("secrets"), Mapping):
            for name, secret in app["secrets"].items():
                if isinstance(secret, Mapping) and "stringData" in secret:
                    yield top, f"{prefix}app.secrets.{name}.stringData", secret["stringData"]
        analysis = holder.get("analysis") if isinstance(holder, Mapping) else None
        if top != "app" and isinstance(analysis, Mapping) and isinstance(analysis.get("alerts"), list):
            for i, alert in enumerate(analysis["alerts"]):
                if isinstance(alert, Mapping) and "url" in alert:
                    yield top, f"{prefix}analysis.alerts[{i}].url", alert["url"]


def unencrypted_secrets(values: Mapping[str, Any], secret_keys: set[str] | None) -> list[Problem]:
    """Tokens, auth headers, Secret values and alert URLs must be stored as Pulumi secrets.

    ``secret_keys`` are the top-level keys the CLI reported as secret (the
    Automation API decrypts them); None when the values come from a file, whose
    secrets are still ``{secure: …}`` leaves (read as ``ENCRYPTED``).
    """
    problems = []
    seen: set[str] = set()
    for top, path, value in _secret_paths(values):
        if secret_keys is not None and top in secret_keys:
            continue
        if _all_encrypted(value) or path in seen:
            continue
        seen.add(path)
        problems.append(Problem(path, "<secret>", f"must be a Pulumi secret: pulumi config set --secret --path {CONFIG_NAMESPACE}:{path} ..."))
    return problems


def _plain_agrees(in_file: Any, given: Any) -> bool:
    """Every plain value of ``in_file`` (a stack file's, secrets encrypted) is the engine's at its place."""
    if in_file == ENCRYPTED:
        return True
    if isinstance(in_file, Mapping):
        return isinstance(given, Mapping) and all(k in given and _plain_agrees(v, given[k]) for k, v in in_file.items())
    return bool(in_file == given)


def _all_encrypted(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_all_encrypted(v) for v in value.values()) if value else True
    return value == ENCRYPTED


def decode_secure(value: Any) -> Any:
    """Replace ``{secure: ...}`` leaves (ciphertext) by a placeholder: validation never decrypts."""
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return ENCRYPTED
        return {k: decode_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_secure(v) for v in value]
    return value


def _without_secrets(data: dict[str, Any], spec: StackSpec) -> dict[str, Any]:
    """The dump with every secret left out (pydantic writes them masked): the token, headers, Secret
    values and alert URLs are set with ``pulumi config set --secret``, never written here."""
    prometheus = data.get("prometheus")
    if isinstance(prometheus, dict):
        prometheus.pop("token", None)
        prometheus.pop("headers", None)
    holders = [data] + [v for v in (data.get("apps") or {}).values() if isinstance(v, dict)]
    for holder in holders:
        app = holder.get("app")
        if isinstance(app, dict):
            app.pop("secrets", None)
        analysis = holder.get("analysis")
        if isinstance(analysis, dict):
            analysis.pop("alerts", None)
    return data


def to_config(spec: StackSpec) -> dict[str, Any]:
    """The stack config (``canary:key`` -> value) that yields ``spec``; secrets are never written."""
    data = _without_secrets(spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True), spec)
    full = _without_secrets(spec.model_dump(mode="json", by_alias=True, exclude_none=True), spec)
    for required in ("app", "gateway", "analysis"):
        if required in full:
            data.setdefault(required, full[required])
    return {f"{CONFIG_NAMESPACE}:{key}": data[key] for key in CONFIG_KEYS if key in data}
