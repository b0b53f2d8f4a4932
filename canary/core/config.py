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
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from canary.core.naming import CONFIG_NAMESPACE
from canary.core.spec import CONFIG_KEYS, ENCRYPTED, Prometheus, StackSpec, field_name, parse_stack
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


def from_config(config: Mapping[str, Any], source: str = "stack config", stack_file: Mapping[str, Any] | None = None,
                placed: bool = True) -> StackSpec:
    """Validate an Automation API config map or a Pulumi program's raw config.

    Both say only which top-level keys hold a secret somewhere (``canary:prometheus`` with its token set
    ``--secret --path``), not which values: ``stack_file``, the stack file's config as read with its
    secrets still encrypted, is where a plain header beside that encrypted token shows."""
    values = values_from_config(config)
    secret_keys = {k.partition(":")[2] for k, v in config.items() if getattr(v, "secret", False)}
    problems = unencrypted_secrets(values, secret_keys)
    in_file = values_from_config(stack_file) if stack_file is not None else None
    if in_file is not None:
        # the program cannot tell which file the engine read (`pulumi up --config-file other.yaml`): the stack
        # file speaks for a value only where its plain text is what the engine gave
        said = {path for path, _ in _unencrypted(values, secret_keys)}
        given = {config_path(parts): value for _, _, parts, value in _secret_paths(values)}
        read = {config_path(parts): value for _, _, parts, value in _secret_paths(in_file)}
        problems += [p for path, p in _unencrypted(in_file, None)
                     if path not in said and _plain_agrees(read.get(path), given.get(path))]
    if placed:
        # a Pulumi secret where canary keeps plain text (app.env, the template) is refused before anything is applied; not in
        # a release's own config (``placed`` False), checked as it began: refused there, its rollback's `up` failed too
        problems += _misplaced_given(values, secret_keys, in_file)
    try:
        return _parsed(values, source, problems)
    except InvalidSpec as exc:
        # a key held as a Pulumi secret shows no secret value of its own in a problem, whatever field the rule is about
        # (an unknown key `canary:dbPassword` set --secret was refused quoting the password); the secrets' own say none
        secrets = {key: _secret_leaves(values, in_file, key) for key in secret_keys}
        hidden = [_masked(p, values, secrets[_top(p.field)]) if _top(p.field) in secret_keys and p not in problems else p for p in exc.problems]
        raise InvalidSpec(hidden, exc.source) from None


def _secret_leaves(values: Mapping[str, Any], in_file: Mapping[str, Any] | None, key: str) -> list[tuple[str | int, ...]] | None:
    """The paths of the Pulumi secrets under ``key``, a key the engine says holds one (decrypted, in ``values``): the
    stack file's encrypted leaves, where the file is what the engine read for that key (each of the engine's leaves is
    at or under an encrypted leaf of the file, or is the file's plain value at its place). None when the file cannot
    say: no file, no encrypted leaf in it, or another shape or value (``--config-file other.yaml``)."""
    if in_file is None or key not in in_file or key not in values:
        return None
    written = dict(_leaves(in_file[key], (key,)))
    secrets = [path for path, leaf in written.items() if leaf == ENCRYPTED]
    for path, leaf in _leaves(values[key], (key,)):
        at = next((path[:n] for n in range(len(path), 0, -1) if path[:n] in written), None)
        if at is None or (written[at] != ENCRYPTED and (at != path or written[at] != leaf)):
            return None
    return secrets or None


def _masked(problem: Problem, values: Mapping[str, Any], secrets: list[tuple[str | int, ...]] | None) -> Problem:
    """``problem``, under a key that holds a Pulumi secret, without the secret: its value masked when its field is a
    secret's path, under one or above one (a map holding it), and any text of a secret taken out of its value and rule.
    A sibling's plain value (``analysis.interval`` beside a secret header match) is shown: masked with the rest, its
    problem read ``(got <secret>)``, which said nothing of what to fix. ``secrets`` None: which leaves are secret is
    unknown, and every value of the key is taken for one."""
    if secrets is None:
        return Problem(problem.field, "<secret>" if problem.value != "nothing" else problem.value, _scrubbed(problem.rule, _at(values, problem.field)))
    fields = [field_name(path) for path in secrets]
    near = any(_within(problem.field, field) or _within(field, problem.field) for field in fields)
    plain = [_value_at(values, path) for path in secrets]
    value = "<secret>" if near and problem.value != "nothing" else _scrubbed(problem.value, plain)
    return Problem(problem.field, value, _scrubbed(problem.rule, plain))


def _within(field: str, above: str) -> bool:
    """Whether ``field`` is ``above`` or under it (``analysis.match[0].headers`` under ``analysis.match[0]``)."""
    return field == above or field.startswith((f"{above}.", f"{above}["))


def _value_at(values: Mapping[str, Any], parts: tuple[str | int, ...]) -> Any:
    """The value at ``parts``, a path of ``values`` (None where it is not)."""
    node: Any = values
    for part in parts:
        found = (isinstance(node, Mapping) and part in node) or (isinstance(node, list) and isinstance(part, int) and part < len(node))
        if not found:
            return None
        node = node[part]
    return node


def _parsed(values: Mapping[str, Any], source: str, secrets: list[Problem], unchecked: tuple[str, ...] = ()) -> StackSpec:
    """``parse_stack``'s spec, or every problem at once: ``secrets`` (values that must be Pulumi secrets and are stored
    in plain text) with parse_stack's own, so that a plain token no longer hides the rest of the file. A problem of
    parse_stack's never quotes such a value: any text of it in a problem is taken out."""
    plain = [value for _, field, _, value in _secret_paths(values) if field in {p.field for p in secrets}]
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
    problems = unencrypted_secrets(values, None) + misplaced_secrets(values)
    problems += [Problem(key, "<secret>", f"is a secret as a whole, which this command cannot read without decrypting: {keep_fields_secret(key)}")
                 for key in whole if key not in {p.field for p in problems}]
    return _parsed(_without(values, whole), source, problems, whole)


def check_file_values(config: Mapping[str, Any], source: str) -> tuple[StackSpec, tuple[str, ...]]:
    """Validate a stack file's ``config:`` map as ``from_file_values`` does, for ``canary validate``; a key that
    is a secret as a whole (``pulumi config set --secret canary:prometheus '{…}'``) is left unchecked and
    returned, not refused: ``canary up`` decrypts and checks it before anything is applied, so refusing it
    here would refuse what up accepts, and calling it valid would claim what was not checked."""
    values = values_from_config(config)
    whole = whole_secrets(values)
    return _parsed(_without(values, whole), source, unencrypted_secrets(values, None) + misplaced_secrets(values), whole), whole


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


def config_path(parts: tuple[str | int, ...]) -> str:
    """``canary:`` and the ``--path`` of a value (``("prometheus", "headers", "X-Scope-OrgID")``) as ``pulumi config set``
    reads it, written as Pulumi writes a property path: a key of letters, digits and ``_`` after a dot, any other
    in brackets and quotes (``canary:prometheus.headers["X-Scope-OrgID"]``), an index in brackets."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"\w+", part, re.ASCII):
            text += f".{part}" if text else part
        else:
            text += '["' + part.replace('"', '\\"') + '"]'
    return f"{CONFIG_NAMESPACE}:{text}"


def _entries(holder: Any, field: str, parts: tuple[str | int, ...], placeholder: str) -> Iterator[tuple[str, tuple[str | int, ...], Any]]:
    """Each entry of a map of secrets (``prometheus.headers``): the field a message names (the map), the entry's
    path and its value; a value that is no map stands for one entry, its key shown as ``placeholder``."""
    if isinstance(holder, Mapping):
        for key, value in holder.items():
            yield field, (*parts, str(key)), value
    else:
        yield field, (*parts, placeholder), holder


def _secret_paths(values: Mapping[str, Any]) -> Iterator[tuple[str, str, tuple[str | int, ...], Any]]:
    """(top-level key, field for a message, config path, value) of every value that must be a Pulumi secret: each
    entry of a map on its own, since each is stored as a secret on its own (the map as one secret string is no map)."""
    prometheus = values.get("prometheus")
    if isinstance(prometheus, Mapping):
        if "token" in prometheus:
            yield "prometheus", "prometheus.token", ("prometheus", "token"), prometheus["token"]
        if "headers" in prometheus:
            for field, parts, value in _entries(prometheus["headers"], "prometheus.headers", ("prometheus", "headers"), "<name>"):
                yield "prometheus", field, parts, value
    apps: list[tuple[str, str, tuple[str, ...], Any]] = [("app", "", (), values), ("analysis", "", (), values)]
    if isinstance(values.get("apps"), Mapping):
        apps += [("apps", f"apps.{name}.", ("apps", str(name)), config) for name, config in values["apps"].items() if isinstance(config, Mapping)]
    for top, prefix, at, holder in apps:
        app = holder.get("app") if isinstance(holder, Mapping) else None
        if top != "analysis" and isinstance(app, Mapping) and isinstance(app.get("secrets"), Mapping):
            for name, secret in app["secrets"].items():
                if isinstance(secret, Mapping) and "stringData" in secret:
                    for field, parts, value in _entries(secret["stringData"], f"{prefix}app.secrets.{name}.stringData",
                                                        (*at, "app", "secrets", str(name), "stringData"), "<key>"):
                        yield top, field, parts, value
        analysis = holder.get("analysis") if isinstance(holder, Mapping) else None
        if top != "app" and isinstance(analysis, Mapping) and isinstance(analysis.get("alerts"), list):
            for i, alert in enumerate(analysis["alerts"]):
                if isinstance(alert, Mapping) and "url" in alert:
                    yield top, f"{prefix}analysis.alerts[{i}].url", (*at, "analysis", "alerts", i, "url"), alert["url"]


def unencrypted_secrets(values: Mapping[str, Any], secret_keys: set[str] | None) -> list[Problem]:
    """Tokens, auth headers, Secret values and alert URLs must be stored as Pulumi secrets.

    ``secret_keys`` are the top-level keys the CLI reported as secret (the
    Automation API decrypts them); None when the values come from a file, whose
    secrets are still ``{secure: …}`` leaves (read as ``ENCRYPTED``). Each problem
    names the command that stores the very entry as a secret, quoted for a shell.
    """
    return [problem for _, problem in _unencrypted(values, secret_keys)]


def _unencrypted(values: Mapping[str, Any], secret_keys: set[str] | None) -> list[tuple[str, Problem]]:
    """``unencrypted_secrets``' problems, each with the config path of the entry it is about."""
    found: dict[str, Problem] = {}
    for top, field, parts, value in _secret_paths(values):
        if secret_keys is not None and top in secret_keys:
            continue
        path = config_path(parts)
        if not _all_encrypted(value):
            found.setdefault(path, Problem(field, "<secret>", f"must be a Pulumi secret: pulumi config set --secret --path {shlex.quote(path)} ..."))
    return list(found.items())


# --- Pulumi secrets where canary keeps plain text ----------------------------------------------------------------------

#: Keys taken as one secret as a whole, read decrypted (a whole ``canary:prometheus`` is documented as accepted).
_WHOLE_SECRET_KEYS = frozenset({"prometheus", "metricTemplates"})


def _secret_place(parts: tuple[str | int, ...]) -> bool:
    """Whether a Pulumi secret may stand at ``parts`` (``("app", "env", "DB_PASSWORD")``): where canary keeps it secret,
    never writing it in plain text. Anywhere else it writes the value as it is: an app's fields into its pod template,
    which both tracks' pins carry into the release's state ConfigMap, the stack output ``canary/<app>`` and the release
    config file's ``canary:release``; the gateway into that output; an analysis into the release's records."""
    if parts in {("prometheus",), ("metricTemplates",)}:
        return True
    if parts[:1] == ("prometheus",):
        return parts[1] in {"token", "headers", "address", "pushgateway"}
    if parts[:1] == ("metricTemplates",):
        return len(parts) == 4 and parts[2:] == ("provider", "address")
    if parts[:1] == ("apps",):
        parts = parts[2:]
    if parts[:2] == ("app", "secrets"):
        return len(parts) >= 4 and parts[3] == "stringData"
    if parts[:2] == ("analysis", "match"):
        # an A/B test's header (a tester's token): its rules never quote it; the gateway's route holds it, as it must
        return len(parts) == 6 and parts[3] in {"headers", "queryParams"} and parts[5] in {"exact", "regex"}
    return len(parts) == 4 and parts[0] == "analysis" and parts[1] in {"alerts", "webhooks"} and isinstance(parts[2], int) and parts[3] == "url"


def _leaves(value: Any, parts: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(path, value) of each leaf of ``value`` (a scalar, an empty map or list), ``parts`` its own path."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, (*parts, str(key)))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _leaves(item, (*parts, i))
    else:
        yield parts, value


def _misplaced(parts: tuple[str | int, ...], held: bool = False) -> Problem:
    """The problem of a Pulumi secret at ``parts`` (``held``: somewhere under that key), where canary keeps plain text:
    what to do instead, never its value."""
    field = field_name(parts)
    app = parts[2:] if parts[:1] == ("apps",) else parts
    said = "holds a Pulumi secret" if held else "is a Pulumi secret"
    if app[:1] == ("app",):
        prefix = field[: len(field) - len(field_name(app))]
        instead = (f"keep each secret value in {prefix}app.secrets.<name>.stringData, a Pulumi secret (pulumi config set --secret --path "
                   f"'{CONFIG_NAMESPACE}:{prefix}app.secrets.<name>.stringData.<key>' …), read by {prefix}app.template through a "
                   "container's env[].valueFrom.secretKeyRef or envFrom[].secretRef")
        rule = (f"{said}, but canary writes the app's pod in plain text (both tracks' templates in the release's state ConfigMap "
                f"canary-<app>-state and the stack output canary/<app>): "
                + (f"set it again with no secret in it and {instead}" if len(app) == 1 else
                   f"remove it (pulumi config rm --path {shlex.quote(config_path(parts))}) and {instead}"))
        if app[1:2] == ("env",):
            rule += " (env is the simple form's, whose pod reads no Secret: write the pod as app.template)"
        return Problem(field, "<secret>", rule)
    return Problem(field, "<secret>", f"{said}, but canary keeps it in plain text (its stack outputs, release state and "
                                      "records): only prometheus.token, prometheus.headers, app.secrets.<name>.stringData, analysis.match's values "
                                      "and the URLs of Prometheus, the Pushgateway, metric templates, webhooks and alerts may be secrets; "
                                      "set it without --secret")


def misplaced_secrets(values: Mapping[str, Any]) -> list[Problem]:
    """A Pulumi secret where canary keeps plain text, in a stack file's values (secrets still encrypted, ``ENCRYPTED``
    leaves): each refused at its path (``app.env.DB_PASSWORD`` set ``--secret --path``), a key as a whole included."""
    return [_misplaced(parts) for key, value in values.items() if key in CONFIG_KEYS
            for parts, leaf in _leaves(value, (key,)) if leaf == ENCRYPTED and not _secret_place(parts)]


def _misplaced_given(values: Mapping[str, Any], secret_keys: set[str], in_file: Mapping[str, Any] | None) -> list[Problem]:
    """``misplaced_secrets`` of config the engine gave decrypted, which says only which top-level keys hold a secret:
    the stack file's leaves where the engine's key is a secret too, else (no file, or one saying no secret is there)
    a secret key holding no place for a secret is refused as a whole: its secret is, wherever it is, in plain text."""
    found = [p for p in misplaced_secrets(in_file) if _top(p.field) in secret_keys] if in_file is not None else []
    for key in sorted(secret_keys & set(CONFIG_KEYS) - _WHOLE_SECRET_KEYS):
        if in_file is not None and any(leaf == ENCRYPTED for _, leaf in _leaves(in_file.get(key), (key,))):
            continue  # the file says which leaves are secrets
        if not any(_secret_place(parts) for parts, _ in _leaves(values.get(key), (key,))):
            found.append(_misplaced((key,), held=True))
    return found


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


#: A config key as a program reads it: ``[namespace:]name``, the name a dotted path (``shop:web.image``); no blank,
#: quote or bracket (the stack file's key is written at that path, one key per dot). The namespace may hold dots: it is
#: the project's name for a key the program reads with ``pulumi.Config()``, and a project name may (``shop.web``; Pulumi
#: takes alphanumerics, ``-``, ``_`` and ``.``), as the namespace Pulumi parses is whatever stands before the colon
_CONFIG_KEY = re.compile(r"(?:([^\s:\[\]\"']+):)?([^\s:.\[\]\"']+(?:\.[^\s:.\[\]\"']+)*)")


def image_config_key(key: Any, project: str) -> str:
    """The stack config key an ``image_config`` names, with its namespace: a key without one is the project's
    (``image`` is ``<project>:image``), as ``pulumi.Config().get("image")`` and ``pulumi config set image`` read it.
    ValueError saying what is wrong otherwise. Canary's own namespace is refused: its keys are canary's fields,
    and ``canary validate`` refuses any other there."""
    example = f"({project}:image, or image, which is {project}:image as pulumi.Config().get(\"image\") reads it)"
    found = _CONFIG_KEY.fullmatch(key) if isinstance(key, str) else None
    if found is None:
        raise ValueError(f"must be a config key, [namespace:]name {example}: the key the program reads the image from, which "
                         "`canary release --image` sets; one colon at most, no empty part, blank, quote or bracket")
    namespace = found.group(1) or project
    if namespace == CONFIG_NAMESPACE:
        raise ValueError(f"names a key of canary's own namespace ({CONFIG_NAMESPACE}:), which holds canary's fields only: read the image "
                         f"from a key of the program's namespace {example}")
    return f"{namespace}:{found.group(2)}"


def config_key_path(key: str) -> tuple[str, ...]:
    """Where a key ``image_config_key`` returns stands in the stack file's ``config:``, as ``pulumi config set --path`` puts
    it: the top key is the namespace and the name's first part, each further dot of the name a level below. Split at the
    colon first: a project's name may hold dots (``shop.web:image`` is one key, ``shop.web:images.web`` two levels)."""
    namespace, _, name = key.partition(":")
    first, *rest = name.split(".")
    return (f"{namespace}:{first}", *rest)
