"""Stack config in and out: one spec, whichever way the config arrives.

The same ``ReleaseSpec`` loads from (1) the Pulumi program's stack config,
(2) the Automation API's config map and (3) a stack config file on disk. This
module only translates those shapes into plain values for ``spec.parse_spec``,
and a spec back into stack config; it reads a file when asked to and does
nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from canary.errors import InvalidSpec, Problem
from canary.spec import CONFIG_KEYS, ReleaseSpec, parse_spec

#: The Pulumi project name, and so the namespace of every config key.
PROJECT = "canary"
#: Where a secret value read from a file (still encrypted) stands in the spec.
ENCRYPTED = "<encrypted>"
_SECRET_PATHS = (("prometheus", "token"), ("prometheus", "headers"))


def stack_file(project_dir: Path, stack: str) -> Path:
    """The stack config file of ``stack`` (Pulumi.yaml sets ``stackConfigDir: stacks``)."""
    return project_dir / "stacks" / f"Pulumi.{stack}.yaml"


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


def values_from_config(config: Mapping[str, Any], project: str = PROJECT) -> dict[str, Any]:
    """Top-level spec values from a config map keyed ``project:key`` (other namespaces ignored)."""
    values: dict[str, Any] = {}
    for full_key, raw in config.items():
        namespace, _, key = full_key.partition(":")
        if not key:
            namespace, key = project, full_key
        if namespace == project:
            values[key] = _plain(raw)
    return values


def from_config(config: Mapping[str, Any], source: str = "stack config", project: str = PROJECT) -> ReleaseSpec:
    """Validate an Automation API config map or a Pulumi program's raw config."""
    values = values_from_config(config, project)
    problems = _unencrypted_secrets(values, secret_keys={k for k, v in config.items() if getattr(v, "secret", False)}, project=project)
    if problems:
        raise InvalidSpec(problems, source)
    return parse_spec(values, source)


def _unencrypted_secrets(values: Mapping[str, Any], secret_keys: set[str] | None, project: str = PROJECT) -> list[Problem]:
    """Tokens and auth headers must be stored as Pulumi secrets, never in plain text."""
    problems = []
    for top, leaf in _SECRET_PATHS:
        section = values.get(top)
        if not isinstance(section, Mapping) or leaf not in section:
            continue
        if secret_keys is not None and f"{project}:{top}" in secret_keys:
            continue
        if _all_encrypted(section[leaf]):
            continue
        problems.append(
            Problem(
                f"{top}.{leaf}",
                "<secret>",
                f"must be a Pulumi secret: pulumi config set --secret --path {top}.{leaf} ...",
            )
        )
    return problems


def _all_encrypted(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_all_encrypted(v) for v in value.values()) if value else True
    return value == ENCRYPTED


def _decode_secure(value: Any) -> Any:
    """Replace ``{secure: ...}`` leaves (ciphertext) by a placeholder: validation never decrypts."""
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return ENCRYPTED
        return {k: _decode_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_secure(v) for v in value]
    return value


class _PulumiYamlLoader(yaml.SafeLoader):
    """YAML as the Pulumi CLI reads a stack file (YAML 1.2 scalars), for the values it types alike.

    PyYAML follows YAML 1.1, where ``on``, ``no`` or ``1:30`` are a bool and an
    integer; to the CLI they are strings. This loader types a plain scalar only
    when both agree: ``~``/``null``/empty as null, ``true``/``false`` (and their
    capitalised forms) as bools, decimal integers and simple decimals as numbers;
    every other scalar stays a string. ``differs`` is set when a plain scalar
    left a string here is one the CLI would still type (hex, exponents,
    timestamps …): a reader that must agree with the CLI leaves such a file to it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.differs = False

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str" and _go_types_plain(value):
            self.differs = True
        return tag


_PulumiYamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", list("-+0123456789")),
    ("tag:yaml.org,2002:float", r"^[-+]?(?:0|[1-9][0-9]*)\.[0-9]+$", list("-+0123456789")),
):
    _PulumiYamlLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)

_NUMBER_CHARS = frozenset("0123456789abcdefABCDEFxXoO_.+-")


def _go_types_plain(value: str) -> bool:
    """A plain scalar the CLI's YAML reads as a number, infinity, NaN, timestamp or merge key."""
    if value == "<<" or re.match(r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)$", value) or re.match(r"\d{4}-\d", value):
        return True
    return value[:1] in "-+.0123456789" and set(value) <= _NUMBER_CHARS


def _load_as_pulumi(text: str) -> tuple[Any, bool]:
    """The YAML document as the CLI reads it, and whether some plain scalar may read differently there."""
    loader = _PulumiYamlLoader(text)
    try:
        return loader.get_single_data(), loader.differs
    finally:
        loader.dispose()


def _plain_data(value: Any) -> bool:
    """Data without a secret to decrypt, with string keys only, whose numbers Python's JSON
    writes as Go's does: an int64, a float neither whole (Go writes 1.0 as 1) nor in exponent form."""
    if isinstance(value, dict):
        return "secure" not in value and all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_data(v) for v in value)
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return not value.is_integer() and 1e-4 <= abs(value) < 1e16
    return value is None or isinstance(value, str)


def plain_config(project_dir: Path, stack: str) -> dict[str, str] | None:
    """The stack's config as ``pulumi config --json`` gives it (``project:key`` -> text,
    objects as JSON), read from the files without a CLI process; None when only the
    CLI can say: a secret to decrypt, an ESC ``environment``, project-level config in
    ``Pulumi.yaml``, a value the two YAML readers could type differently, a file that
    does not read or parse.
    """
    try:
        project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
        document, differs = _load_as_pulumi(stack_file(project_dir, stack).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if differs or not isinstance(project, dict) or "config" in project or project.get("stackConfigDir") != "stacks":
        return None
    if not isinstance(document, dict) or set(document) - {"config", "secretsprovider", "encryptionsalt", "encryptedkey"}:
        return None
    config = document.get("config") or {}
    if not isinstance(config, dict):
        return None
    values: dict[str, str] = {}
    for key, value in config.items():
        # a top-level float is printed by Go's float formatting; a top-level null is not a value
        if not isinstance(key, str) or ":" not in key or value is None or isinstance(value, float) or not _plain_data(value):
            return None
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, (dict, list)):
            values[key] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            values[key] = str(value)
    return values


def read_stack_file(path: Path) -> dict[str, Any]:
    """The ``config:`` map of a stack file, secrets left encrypted; InvalidSpec on a bad file."""
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidSpec([Problem("file", source, "does not exist")], source) from None
    except OSError as exc:
        raise InvalidSpec([Problem("file", source, f"cannot be read: {exc.strerror}")], source) from None
    try:
        document, _ = _load_as_pulumi(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec([Problem("file", source, f"must be valid YAML: {getattr(exc, 'problem', exc)}{where}")], source) from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise InvalidSpec([Problem("file", source, "must be a YAML mapping with a config: key")], source)
    unknown = sorted(set(document) - {"config", "secretsprovider", "encryptionsalt", "encryptedkey", "environment"})
    if unknown:
        raise InvalidSpec([Problem(str(k), "...", "is not a stack file key (expected config:)") for k in unknown], source)
    config = document.get("config") or {}
    if not isinstance(config, Mapping):
        raise InvalidSpec([Problem("config", _type_name(config), "must be a mapping of project:key to values")], source)
    return {str(k): _decode_secure(v) for k, v in config.items()}


def _type_name(value: object) -> str:
    return type(value).__name__


def load_stack_file(path: Path, project: str = PROJECT) -> ReleaseSpec:
    """Validate a stack config file anywhere on disk."""
    config = read_stack_file(path)
    values = values_from_config(config, project)
    problems = _unencrypted_secrets(values, secret_keys=None, project=project)
    if problems:
        raise InvalidSpec(problems, str(path))
    return parse_spec(values, str(path))


def to_config(spec: ReleaseSpec, project: str = PROJECT) -> dict[str, Any]:
    """The stack config (``project:key`` -> value) that yields ``spec``; secrets are never written."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
    prometheus = data.get("prometheus")
    if isinstance(prometheus, dict):
        prometheus.pop("token", None)
        prometheus.pop("headers", None)
    for required in ("app", "gateway", "stableImage", "analysis"):
        data.setdefault(required, spec.model_dump(mode="json", by_alias=True, exclude_none=True)[required])
    return {f"{project}:{key}": data[key] for key in CONFIG_KEYS if key in data}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks; whole floats as integers."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)
_Dumper.add_representer(
    float,
    lambda d, f: d.represent_int(int(f)) if f.is_integer() else yaml.SafeDumper.represent_float(d, f),
)


def dump_stack_file(spec: ReleaseSpec, project: str = PROJECT) -> str:
    """A stack config file's text for ``spec``."""
    return yaml.dump({"config": to_config(spec, project)}, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def edit_plain_keys(text: str, values: Mapping[str, str], remove: tuple[str, ...] = (), project: str = PROJECT) -> str | None:
    """The stack file's text with top-level plain keys set (``values``) and removed (``remove``).

    A line edit, so that comments, key order, ``secure:`` values and the
    encryption salt stay exactly as they were. ``None`` when the file is not in
    the block shape this edit understands (a key to change holds a mapping or a
    multi-line value, ``config`` is not a block mapping, the file does not parse,
    ...): the caller then lets the Pulumi CLI do it. The result is checked by
    parsing it: its ``config`` must be the old one with exactly these changes.
    """
    try:
        before = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError:
        return None
    if not isinstance(before, dict) or not isinstance(before.get("config") or {}, dict):
        return None
    config = dict(before.get("config") or {})
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "config:")
    except StopIteration:
        if "config" in before:
            return None
        lines += ["config:"]
        start = len(lines) - 1
    end = start + 1  # one past the config block's last line
    while end < len(lines) and (not lines[end].strip() or lines[end][:1] in (" ", "#")):
        end += 1
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1][:1] == "#"):
        end -= 1  # trailing blank lines and column-0 comments belong to what follows
    children = [line for line in lines[start + 1:end] if line.strip() and not line.lstrip().startswith("#")]
    indent = (len(children[0]) - len(children[0].lstrip())) if children else 2

    def find(key: str) -> int | None:
        prefix = " " * indent + f"{project}:{key}:"
        found = [i for i in range(start + 1, end) if lines[i].startswith(prefix)]
        if not found:
            if f"{project}:{key}" in config:
                raise ValueError(key)  # present in a form this edit does not know (say, quoted)
            return None
        i = found[0]
        rest = lines[i][len(prefix):].strip()
        following = lines[i + 1] if i + 1 < end else ""
        if len(found) > 1 or not rest or rest[:1] in "|>&*!{[" or (following.strip() and len(following) - len(following.lstrip()) > indent):
            raise ValueError(key)
        return i

    try:
        for key in remove:
            at = find(key)
            if at is not None:
                del lines[at]
                end -= 1
        for key, value in values.items():
            line = " " * indent + f"{project}:{key}: {json.dumps(value)}"
            at = find(key)
            if at is None:
                lines.insert(end, line)
                end += 1
            else:
                lines[at] = line
    except ValueError:
        return None
    result = "\n".join(lines) + "\n"
    expected = dict(config)
    for key in remove:
        expected.pop(f"{project}:{key}", None)
    expected.update({f"{project}:{k}": v for k, v in values.items()})
    try:
        after = yaml.safe_load(result)
    except yaml.YAMLError:
        return None
    if not isinstance(after, dict) or after.get("config") != expected or {k: v for k, v in after.items() if k != "config"} != {k: v for k, v in before.items() if k != "config"}:
        return None
    return result
