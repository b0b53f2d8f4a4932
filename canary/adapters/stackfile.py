"""YAML files of the project: the stack files, the release config files, Flagger manifests.

The only module that imports ruamel.yaml. It finds the project and its stack
files (``stackConfigDir`` of ``Pulumi.yaml``), reads a stack file as the Pulumi
CLI does (YAML 1.2 scalars: ``on`` and ``1:30`` are strings), says when only the
CLI can read a file the same way, edits a stack file without losing a comment,
a key's order, a ``secure:`` value or the salt, and writes a release's config
file: the snapshot of the stack file plus the ``canary:release`` key.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError  # callers catch a bad file as stackfile.YAMLError, without ruamel
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarstring import LiteralScalarString, SingleQuotedScalarString

from canary.adapters import files
from canary.core import config as stackconfig
from canary.core import routing
from canary.core.naming import CONFIG_NAMESPACE
from canary.core.spec import StackSpec, field_name
from canary.errors import InvalidSpec, Problem

#: The keys a stack file may have beside ``config``.
STACK_FILE_KEYS = {"config", "secretsprovider", "encryptionsalt", "encryptedkey", "environment"}


# --- the project --------------------------------------------------------------------------------


def find_project_dir(start: Path | None = None) -> Path:
    """The Pulumi project: ``$CANARY_PROJECT_DIR`` (checked as ``check_project`` does), else the current
    directory or its nearest parent holding ``Pulumi.yaml``. InvalidSpec when there is none."""
    if env := os.environ.get("CANARY_PROJECT_DIR"):
        return check_project(Path(env), "CANARY_PROJECT_DIR")
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        # the nearest project as Pulumi finds it (a Pulumi.yml one is named by check_project), never a parent's beyond it
        if any((candidate / name).is_file() for name in ("Pulumi.yaml", "Pulumi.yml", "Pulumi.json")):
            return candidate
    raise InvalidSpec([Problem("--project-dir", str(here), "holds no Pulumi.yaml, nor does any parent: run in a Pulumi project or give --project-dir")], "project")


def open_project(given: str | os.PathLike[str] | None = None) -> Path:
    """The project a command acts on, resolved and checked (``check_project``): ``given`` (``--project-dir``,
    a str or a Path), else ``find_project_dir``'s."""
    if given is not None:
        return check_project(Path(given), "--project-dir")
    found = find_project_dir()
    return check_project(found, "CANARY_PROJECT_DIR" if os.environ.get("CANARY_PROJECT_DIR") else "--project-dir")


def check_project(project_dir: Path, option: str) -> Path:
    """``project_dir`` resolved, when it is a Pulumi project: a directory whose ``Pulumi.yaml`` parses and names
    the project. InvalidSpec naming ``option`` (where the directory came from) otherwise: given a directory
    without one, the Automation API writes a ``Pulumi.yaml`` of its own there (``name: ''``), and one that does
    not parse loses its ``stackConfigDir`` (the stack file then looked for in the wrong place)."""
    path = project_dir.resolve()
    if not path.is_dir():
        rule = "is not a directory" if path.exists() else "does not exist"
        raise InvalidSpec([Problem(option, str(project_dir), f"{rule}: give the directory of a Pulumi project (the one holding Pulumi.yaml)")],
                          "project")
    settings, rule = _project_file(path)
    if rule is None and not (isinstance(settings.get("name"), str) and settings["name"].strip()):
        rule = "its Pulumi.yaml names no project: it needs a name: key (and a runtime:), as pulumi new writes it"
    if rule is not None:
        raise InvalidSpec([Problem(option, str(project_dir), rule)], "project")
    return path


def _project_file(project_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The project's ``Pulumi.yaml`` as plain data, and what is wrong with it (None: nothing)."""
    try:
        text = project_dir.joinpath("Pulumi.yaml").read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return {}, f"its Pulumi.yaml must be UTF-8 text: byte {exc.start} is not ({exc.reason})"
    except OSError:
        other = next((name for name in ("Pulumi.yml", "Pulumi.json") if project_dir.joinpath(name).is_file()), None)
        if other is not None:  # Pulumi reads these too (and its stack files as Pulumi.<stack>.yml, .json): canary does not
            return {}, (f"holds {other}, not Pulumi.yaml: canary reads a project's Pulumi.yaml and its stacks' Pulumi.<stack>.yaml; "
                        "rename them (as YAML)")
        return {}, "holds no Pulumi.yaml: give the directory of a Pulumi project"
    try:
        data = load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return {}, f"its Pulumi.yaml does not parse: {where}{getattr(exc, 'problem', None) or exc}"
    if data is not None and not isinstance(data, dict):
        return {}, f"its Pulumi.yaml must be a YAML mapping (name:, runtime: …), not a {type(data).__name__}"
    return data or {}, None


def project_settings(project_dir: Path) -> dict[str, Any]:
    """The project's ``Pulumi.yaml`` as plain data ({} when there is none); InvalidSpec when it does not parse:
    read as empty, its ``stackConfigDir`` was lost and a stack file looked for beside it."""
    settings, rule = _project_file(project_dir)
    if rule is not None and project_dir.joinpath("Pulumi.yaml").exists():
        raise InvalidSpec([Problem("Pulumi.yaml", str(project_dir / "Pulumi.yaml"), rule.removeprefix("its Pulumi.yaml "))], "project")
    return settings


def stack_file(project_dir: Path, stack: str) -> Path:
    """``Pulumi.<stack>.yaml`` in the project's ``stackConfigDir``; an org-qualified name uses its last part."""
    short = stack.rsplit("/", 1)[-1]
    config_dir = project_settings(project_dir).get("stackConfigDir") or ""
    return project_dir / str(config_dir) / f"Pulumi.{short}.yaml"


# --- plain YAML ---------------------------------------------------------------------------------


def _yaml(typ: str = "safe") -> YAML:
    y = YAML(typ=typ, pure=True)
    y.default_flow_style = False
    y.width = 4096
    # a round trip keeps `[{name: public}]` as written (ruamel's default writes it `[name: public]`): the same YAML, but a
    # line of the team's stack file that `canary release --image` rewrote beside the one it set
    y.brace_single_entry_mapping_in_flow_sequence = True
    return y


def load(text: str) -> Any:
    """One YAML document as plain data."""
    return _yaml().load(text)


def load_all(text: str) -> list[Any]:
    return [d for d in _yaml().load_all(text) if d is not None]


def dump(data: Any) -> str:
    """Plain data as block YAML; multi-line strings as literal blocks."""
    out = io.StringIO()
    y = _yaml("rt")
    y.dump(_literal(data), out)
    return out.getvalue()


def dump_all(documents: Iterable[Any]) -> str:
    out = io.StringIO()
    _yaml("rt").dump_all([_literal(d) for d in documents], out)
    return out.getvalue()


def _literal(data: Any) -> Any:
    if isinstance(data, str) and "\n" in data:
        return LiteralScalarString(data)
    if isinstance(data, str) and _go_reads(data) is not None:
        # ruamel writes 2024-1-1 or .1e1 unquoted, which the CLI's YAML reads as a timestamp or a number
        return SingleQuotedScalarString(data)
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, Mapping):
        return {k: _literal(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_literal(v) for v in data]
    return data


# --- reading a stack file as the CLI does --------------------------------------------------------

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)\.[0-9]+$")
_NUMBER_CHARS = frozenset("0123456789abcdefABCDEFxXoO_.+-")


def _go_types_plain(value: str) -> bool:
    """A plain scalar the CLI's YAML might read as a number, infinity, NaN, timestamp or merge key (a superset)."""
    if value == "<<" or re.match(r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)$", value) or re.match(r"\d{4}-\d", value):
        return True
    return value[:1] in "-+.0123456789" and set(value) <= _NUMBER_CHARS


_GO_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")  # yaml.v3's yamlStyleFloat
_GO_DOT_FLOAT = re.compile(r"^\.[0-9]+(?:[eE][-+]?[0-9]+)?$")
_GO_TIMESTAMP = re.compile(
    r"^(?P<y>[0-9]{4})-(?P<mo>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:(?:[Tt](?P<h>[0-9]{1,2}):(?P<mi>[0-9]{1,2}):(?P<s>[0-9]{1,2})(?:\.[0-9]+)?(?:Z|[-+][0-9]{2}:[0-9]{2}))"
    r"|(?: (?P<h2>[0-9]{1,2}):(?P<mi2>[0-9]{1,2}):(?P<s2>[0-9]{1,2})(?:\.[0-9]+)?))?$")
_GO_SPECIAL = {**dict.fromkeys((".nan", ".NaN", ".NAN"), "NaN"),
               **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), "infinity"),
               **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), "minus infinity")}
_INT64, _UINT64 = 2**63, 2**64
#: an underscore between two digits, which Go's float syntax allows (``.5_0``)
_GO_UNDERSCORE = re.compile(r"(?<=[0-9])_(?=[0-9])")


def _go_int(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 0, 64)``, else ``ParseUint``: a sign, then 0x, 0o, 0b or a leading 0 (octal)."""
    sign, digits = (-1 if text[:1] == "-" else 1), text.lstrip("+-") if text[:1] in "+-" else text
    if text[:1] in "+-" and len(text) - len(digits) != 1:
        return None
    base, body = 10, digits
    if digits[:2] in ("0x", "0X"):
        base, body = 16, digits[2:]
    elif digits[:2] in ("0o", "0O"):
        base, body = 8, digits[2:]
    elif digits[:2] in ("0b", "0B"):
        base, body = 2, digits[2:]
    elif digits[:1] == "0" and len(digits) > 1:
        base, body = 8, digits[1:]
    allowed = "0123456789abcdefABCDEF" if base == 16 else "0123456789"[:base]
    if not body or any(c not in allowed for c in body):
        return None
    value = sign * int(body, base)
    if -_INT64 <= value < _INT64 or (text[:1] not in "+-" and 0 <= value < _UINT64):
        return value
    return None


def _go_reads(text: str) -> str | None:
    """What the CLI's YAML (yaml.v3) makes of a plain, untagged scalar that is not null, a boolean or text
    (``"the number 8"``, ``"a timestamp"``); None when it reads it as text."""
    if text in _GO_SPECIAL:
        return _GO_SPECIAL[text]
    head = text[:1]
    if head == ".":
        if "_" in text and "_" in _GO_UNDERSCORE.sub("", text):
            return None
        plain = text.replace("_", "")
        if _GO_DOT_FLOAT.match(plain) and len(plain) < 400 and math.isfinite(float(plain)):
            return f"the number {float(plain):g}"
        return None
    if not head or head not in "+-0123456789":
        return None
    when = _GO_TIMESTAMP.match(text)
    if when:
        try:
            datetime(int(when["y"]), int(when["mo"]), int(when["d"]), int(when["h"] or when["h2"] or 0),
                     int(when["mi"] or when["mi2"] or 0), int(when["s"] or when["s2"] or 0))
            return "a timestamp"
        except ValueError:
            pass
    plain = text.replace("_", "")
    number = _go_int(plain)
    if number is not None:
        return f"the number {number}"
    if _GO_FLOAT.match(plain) and len(plain) < 400 and math.isfinite(float(plain)):
        return f"the number {float(plain):g}"
    return None


def _go_big_int(text: str) -> Any:
    """A decimal integer beyond int64 as the CLI reads it and hands it on as JSON: a float, which Go writes in its
    shortest form without an exponent below 1e21 (``18446744073709552000``, read back as that whole number);
    text when no float holds it."""
    number = float(text)
    if not math.isfinite(number):
        return text
    return int(Decimal(repr(number))) if abs(number) < 1e21 else number


def _explicit_tag(node: Node, text: str) -> str | None:
    """The tag written before a node (``!!int``), after its anchor if any; None when it has none."""
    rest = text[node.start_mark.index:node.end_mark.index]
    if rest.startswith("&"):
        rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
    return rest.split(None, 1)[0] if rest.startswith("!") else None


class _AsPulumi:
    """A document as the Pulumi CLI reads it, typing a plain scalar only where both readers agree:
    null, true/false, decimal integers and simple decimals; every other scalar is a string, and
    ``differs`` notes a plain one the CLI's YAML could still type (hex, exponents, timestamps …).
    ``unlike`` lists the scalars the CLI's YAML does read otherwise (path, line, what it reads), and
    ``repeated`` the mapping keys given twice (path, first line, second line), which the CLI refuses."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.differs = False
        #: (path, line, the value written, what the CLI's YAML makes of it, or the rule when it is not a value)
        self.unlike: list[tuple[tuple[Any, ...], int, str, str]] = []
        self.repeated: list[tuple[tuple[Any, ...], int, int]] = []

    def value(self, node: Node, path: tuple[Any, ...] = ()) -> Any:
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            lines: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if isinstance(key, ScalarNode):
                    if key.value == "<<" and key.style is None:
                        self.differs = True
                        self.unlike.append(((*path, "<<"), line, "<<", "a merge key"))
                    if key.value in lines:
                        # yaml.v3 refuses a key given twice in one mapping ("mapping key … already defined at line N")
                        self.differs = True
                        self.repeated.append(((*path, key.value), lines[key.value], line))
                    else:
                        lines[key.value] = line
                name = self.value(key, (*path, f"{key.value if isinstance(key, ScalarNode) else '?'} (key)"))
                out[name] = self.value(value, (*path, name))
            return out
        if isinstance(node, SequenceNode):
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        text = node.value
        tag = _explicit_tag(node, self.text) if self.text else None
        if tag is not None and tag not in ("!!str", "!<tag:yaml.org,2002:str>"):
            self.differs = True
            self.unlike.append((path, node.start_mark.line + 1, text, f"the tag {tag}"))
            return text
        if node.style is not None or tag is not None:  # quoted, a block scalar or tagged !!str: a string
            if tag is None and not node.tag.endswith(":str"):
                self.differs = True
            return text
        if _NULL.match(text):
            return None
        if _BOOL.match(text):
            return text.lower() == "true"
        if _INT.match(text):
            if len(text) > 4000:  # (Python refuses to read such a number; the CLI reads it as text)
                self.differs = True
                return text
            number = int(text)
            if not -_INT64 <= number < _INT64:
                self.differs = True
                return _go_big_int(text)
            return number
        if _FLOAT.match(text):
            number = float(text)
            if not math.isfinite(number):  # beyond any float: the CLI's YAML reads it as text
                self.differs = True
                return text
            return number
        if _go_types_plain(text):
            self.differs = True
        reads = _go_reads(text)
        if reads is not None:
            self.differs = True
            self.unlike.append((path, node.start_mark.line + 1, text, reads))
        return text


def _read_as_pulumi(text: str) -> tuple[Any, _AsPulumi]:
    node = YAML(typ="rt", pure=True).compose(text)
    reader = _AsPulumi(text)
    if node is None:
        return None, reader
    return reader.value(node), reader


def _load_as_pulumi(text: str) -> tuple[Any, bool]:
    document, reader = _read_as_pulumi(text)
    return document, reader.differs


def _field(path: tuple[Any, ...]) -> str:
    """A place in a stack file as a problem names it: ``app.env.A`` under ``config: canary:app``
    (as the spec names its fields), ``kubernetes:context``, ``encryptionsalt``."""
    parts = list(path[1:]) if path[:1] == ("config",) and len(path) > 1 else list(path)
    if not parts:
        return "(top level)"
    head = str(parts[0])
    if head.startswith(f"{CONFIG_NAMESPACE}:") and len(parts) > 1:
        head = head[len(CONFIG_NAMESPACE) + 1:]
    return field_name([head, *parts[1:]])


#: fields whose values are secrets: a plain value written there is never shown
_SECRET_PLACE = re.compile(r"(^|\.)(token|stringData)(\.|\[|$)|^prometheus\.headers(\.|$)|alerts\[\d+\]\.url")


def _read_otherwise(field: str, line: int, written: str, reads: str) -> Problem:
    """The problem of a scalar the CLI's YAML (yaml.v3, which `canary up` and `pulumi` read the file with) reads
    otherwise than canary validate would: ``010`` is 8 there, ``1e3`` 1000, ``2024-01-01`` a timestamp."""
    if reads == "a merge key":
        return Problem(field, "<<", f"is a YAML merge key (line {line}), which the Pulumi CLI's YAML merges and canary would read as a "
                       "key: write the keys out")
    if reads.startswith("the tag "):
        return Problem(field, written if not _SECRET_PLACE.search(field) else "<secret>",
                       f"carries {reads} (line {line}), by which the Pulumi CLI's YAML reads it and canary does not: write the value "
                       "without a tag (quoted, if it is text)")
    if _SECRET_PLACE.search(field):
        return Problem(field, "<secret>", f"is read otherwise by the Pulumi CLI's YAML than as the text written (line {line}): quote it")
    if reads in ("infinity", "minus infinity", "NaN"):
        return Problem(field, written, f"must be a finite number: the Pulumi CLI's YAML reads {written} as {reads}, which `pulumi config` "
                       f"cannot even show (line {line})")
    how = "quote it" if reads == "a timestamp" else "write the number in plain decimal, or quote it if it is text"
    return Problem(field, written, f"is read by the Pulumi CLI's YAML (which canary up and pulumi use) as {reads}, not as the text "
                   f"{written} written (line {line}): {how}")


def read_text(path: Path, field: str = "file") -> str:
    """A file the user names (a stack file, a manifest), as text; InvalidSpec naming it when it cannot be read."""
    source = str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidSpec([Problem(field, source, "does not exist")], source) from None
    except UnicodeDecodeError as exc:
        raise InvalidSpec([Problem(field, source, f"must be UTF-8 text: byte {exc.start} is not ({exc.reason})")], source) from None
    except OSError as exc:
        raise InvalidSpec([Problem(field, source, f"cannot be read: {exc.strerror}")], source) from exc


def read_stack_file(path: Path) -> dict[str, Any]:
    """The ``config:`` map of a stack file, secrets left encrypted; InvalidSpec on a bad file."""
    source = str(path)
    text = read_text(path)
    try:
        document, reader = _read_as_pulumi(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec([Problem("file", source, f"must be valid YAML: {getattr(exc, 'problem', exc)}{where}")], source) from exc
    if reader.repeated:
        # the CLI refuses the whole file: last-wins here would validate one value while `pulumi config` reads none
        raise InvalidSpec([Problem(_field(path), str(path[-1]), f"is defined twice in one mapping, at line {first} and at line {second}: "
                                   "Pulumi refuses the file (mapping key already defined); keep one")
                           for path, first, second in reader.repeated], source)
    ours = [(place, line, written, rule) for place, line, written, rule in reader.unlike
            if len(place) > 1 and place[0] == "config" and str(place[1]).startswith(f"{CONFIG_NAMESPACE}:")]
    if ours:
        # validate would read one value and `canary up` (through the CLI) another: refused, so both read the same
        raise InvalidSpec([_read_otherwise(_field(place), line, written, reads) for place, line, written, reads in ours], source)
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise InvalidSpec([Problem("file", source, "must be a YAML mapping with a config: key")], source)
    unknown = sorted(set(document) - STACK_FILE_KEYS)
    if unknown:
        raise InvalidSpec([Problem(str(k), "...", "is not a stack file key (expected config:)") for k in unknown], source)
    config = document.get("config") or {}
    if not isinstance(config, Mapping):
        raise InvalidSpec([Problem("config", type(config).__name__, "must be a mapping of namespace:key to values")], source)
    return {str(k): stackconfig.decode_secure(v) for k, v in config.items()}


def load_stack_file(path: Path) -> StackSpec:
    """Validate a stack config file anywhere on disk (secrets stay encrypted), to use what it says."""
    spec = stackconfig.from_file_values(read_stack_file(path), str(path))
    return _no_release(spec, path)


def check_stack_file(path: Path) -> tuple[StackSpec, tuple[str, ...]]:
    """Validate a stack config file without decrypting it (``canary validate``): the spec, and the
    top-level keys that are secrets as a whole, which could not be checked."""
    spec, unchecked = stackconfig.check_file_values(read_stack_file(path), str(path))
    return _no_release(spec, path), unchecked


def _no_release(spec: StackSpec, path: Path) -> StackSpec:
    if spec.release is not None:
        raise InvalidSpec([Problem(f"{CONFIG_NAMESPACE}:release", "set", "is written by canary into its release config files only; remove it from the stack file")], str(path))
    return spec


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


def plain_config(project_dir: Path, stack: str, text: str | None = None) -> dict[str, str] | None:
    """The stack's config as ``pulumi config --json`` gives it (``namespace:key`` -> text, objects as
    sorted compact JSON), read from the stack file (or ``text``, a snapshot of it) without a CLI
    process; None when only the CLI can say: a secret to decrypt, an ESC ``environment``,
    project-level config in ``Pulumi.yaml``, a value the two YAML readers could type differently,
    a file that does not read or parse."""
    try:
        project = load(project_dir.joinpath("Pulumi.yaml").read_text())
        document, differs = _load_as_pulumi(text if text is not None else stack_file(project_dir, stack).read_text())
    except (OSError, UnicodeDecodeError, YAMLError):
        return None
    if differs or not isinstance(project, dict) or "config" in project:
        return None
    if not isinstance(document, dict) or set(document) - (STACK_FILE_KEYS - {"environment"}):
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
        elif isinstance(value, dict | list):
            values[key] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            values[key] = str(value)
    return values


# --- writing ------------------------------------------------------------------------------------


def release_config(snapshot: str, release: Mapping[str, Any]) -> str:
    """A release's config file: the stack file as it was when the release began (comments,
    ``secure:`` values and the secrets-provider lines kept) with ``canary:release`` set."""
    y = _yaml("rt")
    document = y.load(snapshot) or {}
    config = document.setdefault("config", {})
    if config is None:
        document["config"] = config = {}
    config[f"{CONFIG_NAMESPACE}:release"] = json.loads(json.dumps(dict(release)))
    out = io.StringIO()
    y.dump(document, out)
    return out.getvalue()


def _indents(text: str) -> tuple[int, int, int]:
    """The file's own indentation (mapping, sequence, dash offset), so that an edit rewrites no other line."""
    mapping = sequence_offset = None
    previous_indent = 0
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if stripped.startswith("- "):
            if sequence_offset is None:
                sequence_offset = max(0, indent - previous_indent)
        elif mapping is None and indent > 0:
            mapping = indent
        previous_indent = indent
    mapping = mapping or 2
    offset = sequence_offset if sequence_offset is not None else 0
    return mapping, offset + 2, offset


class _Absent:
    """No key: what ``set_value`` returns as the old value when there was none, and the value that removes one."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


def set_value(path: Path, keys: tuple[str, ...], value: Any) -> tuple[Any, Any]:
    """Set one value of a stack file at a path of keys (``("canary:app", "image")``) by a round-trip
    edit: comments, order, other keys, ``secure:`` values and the salt stay as they were; ``ABSENT``
    removes the key. The edit holds a lock on the file, so concurrent edits of other keys are never
    lost; the result is checked by reading it back. Returns the old value (``ABSENT`` when there was
    no key) and the new one."""
    with files.locked_in_place(path):
        y = _yaml("rt")
        y.preserve_quotes = True
        text = read_text(path)
        mapping, sequence, offset = _indents(text)
        y.indent(mapping=mapping, sequence=sequence, offset=offset)
        document = y.load(text)
        if not isinstance(document, Mapping):
            raise InvalidSpec([Problem("file", str(path), "must be a YAML mapping with a config: key")], str(path))
        node: Any = document.setdefault("config", {})
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, Mapping):
                raise InvalidSpec([Problem(".".join(keys), str(child), "cannot hold a key: it is not a mapping")], str(path))
            node = child
        old = node.get(keys[-1], ABSENT)
        if value is ABSENT:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
        out = io.StringIO()
        y.dump(document, out)
        result = out.getvalue()
        before = read_stack_file(path)
        after_doc, _ = _load_as_pulumi(result)
        after = {str(k): stackconfig.decode_secure(v) for k, v in (after_doc.get("config") or {}).items()}
        expected = json.loads(json.dumps(before))
        cursor = expected
        for key in keys[:-1]:
            cursor = cursor.setdefault(key, {})
        if value is ABSENT:
            cursor.pop(keys[-1], None)
        else:
            cursor[keys[-1]] = value
        if after != expected:
            raise InvalidSpec([Problem(".".join(keys), str(value), "could not be written without changing other keys; edit the file by hand")], str(path))
        files.write_text_atomic(path, result)
    return old, value


#: The A/B match values of the route each release pins, by (app, release id), for the program of an ``up`` run in this
#: process (programs run inline). A value may be a secret (a tester's token): in the release config file it would be
#: plain config, which Pulumi keeps in every update's history, so the file holds ``routing.NOT_RECORDED`` in its place
#: and the program takes the values from here (``route_matches``).
_MATCH_VALUES: dict[tuple[str, str], list[Any]] = {}
_MATCH_VALUES_LOCK = threading.Lock()


def route_matches(app: str, release: str) -> list[Any] | None:
    """The match values the release config of ``app``'s ``release`` left out (None: this process wrote none)."""
    with _MATCH_VALUES_LOCK:
        return _MATCH_VALUES.get((app, release))


class ReleaseConfigs:
    """The release's config files (the ``ConfigPort``): the snapshot with the tracks pinned, written
    into ``directory``; and what changed in the stack file since the snapshot."""

    def __init__(self, stack_path: Path, directory: Path, app: str, at_rest: Mapping[str, Any] | None = None) -> None:
        self.stack_path = stack_path
        self.directory = directory
        self.app = app
        #: the stack's other apps that no release moves, pinned at rest to what their stable runs: an ``up`` of this
        #: release leaves their resources alone, but computes every app's stack outputs; without a pin another app's
        #: ``stable`` output became its desired template, and its next ``canary up`` rolled that onto stable unchecked
        self.at_rest = dict(at_rest or {})

    def write(self, release: str, snapshot: str, pins: Mapping[str, Any]) -> Path:
        """The release config file of an ``up``: the snapshot, this app's ``pins`` and the others' at rest. The route's
        A/B match values stay in this process (``route_matches``), out of the file and of Pulumi's update history."""
        route = pins.get("route")
        if isinstance(route, Mapping) and route.get("matches"):
            with _MATCH_VALUES_LOCK:
                _MATCH_VALUES[(self.app, release)] = list(route["matches"])
            pins = {**pins, "route": routing.recorded(route)}
        path = self.directory / f"{release}.config.yaml"
        files.write_text_atomic(path, release_config(snapshot, {**self.at_rest, self.app: dict(pins)}), mode=0o600)
        return path

    def discard(self, path: Path) -> None:
        """Remove a release config file once its ``up`` is over (the next ``up`` writes a file of its own)."""
        path.unlink(missing_ok=True)

    def changes_since(self, snapshot: str) -> dict[str, Any]:
        """Config values of the stack file that differ from ``snapshot`` (dotted paths, secrets as
        ``<encrypted>``), less the other apps' of a stack of several (their own releases' edits);
        ``{"(file)": ...}`` when the file cannot be read."""
        try:
            now = _config_of(self.stack_path.read_text())
            then = _config_of(snapshot)
        except (OSError, YAMLError) as exc:
            return {"(stack file)": f"unreadable: {exc}"}
        apps = f"{CONFIG_NAMESPACE}:apps."
        return {key: value for key, value in _diff(then, now).items()
                if not key.startswith(apps) or key[len(apps):].split(".", 1)[0] == self.app}

    def keep(self, release: str, changes: Mapping[str, Any]) -> Path | None:
        """Keep the values of ``changes`` in a file next to the stack file: nothing edited is lost."""
        path = self.stack_path.with_name(f"{self.stack_path.name}.{release}.unapplied")
        try:
            files.write_text_atomic(path, "# Changed in the stack file during release " + release + "; not applied by its rollback.\n" + dump(dict(changes)))
        except OSError:
            return None
        return path


def _config_of(text: str) -> dict[str, Any]:
    document, _ = _load_as_pulumi(text)
    config = (document or {}).get("config") or {}
    return {str(k): stackconfig.decode_secure(v) for k, v in config.items()} if isinstance(config, Mapping) else {}


def _diff(then: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(set(then) | set(now), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        a, b = then.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(_diff(a, b, path))
        else:
            out[path] = b
    return out


# --- Flagger manifests and generated stack files -------------------------------------------------


def load_manifests(texts: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Parse (source name, YAML text) pairs into manifests; InvalidSpec names the file."""
    manifests: list[dict[str, Any]] = []
    for source, text in texts:
        try:
            documents = load_all(text)
        except YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise InvalidSpec([Problem("file", source, f"must be valid YAML: {getattr(exc, 'problem', exc)}{where}")], source) from exc
        for doc in documents:
            if not isinstance(doc, dict) or "kind" not in doc:
                raise InvalidSpec([Problem("kind", source, "every document must be a Kubernetes manifest with a kind")], source)
            manifests.append(doc)
    return manifests


#: The comment lines import-flagger writes at the top of a stack file; a merge replaces them.
_IMPORT_HEADER = ("# Imported from ", "# note: ")


def _secure_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
    """The paths (keys and list indices) of the ``secure:`` values in a config value."""
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            yield path
            return
        for key, child in value.items():
            yield from _secure_paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _secure_paths(child, (*path, i))


def _keep_secrets(old: Mapping[str, Any], new: dict[str, Any], source: str) -> list[str]:
    """Carry the secrets of the old ``canary:*`` keys into ``new`` where it does not set their place (the import
    writes no secret: a token, a Secret's values, an alert's URL): the whole key or mapping entry holding one is
    kept. A secret where the import writes a list (or a plain value) cannot be placed: InvalidSpec naming it."""
    kept: list[str] = []
    for key, value in old.items():
        for path in _secure_paths(value):
            if key == "canary:prometheus" and path and path[0] != "address" and isinstance(value, Mapping) and isinstance(new.get(key), Mapping):
                # a token (or header) is Prometheus's at its address: kept beside another address, it would go to that server
                then, now = value.get("address"), new[key].get("address")
                if now is not None and now != then:
                    name = ".".join(map(str, (key, *path)))
                    raise InvalidSpec([Problem(name, "a secret", f"is sent to {then if isinstance(then, str) else 'the old address'}, and the import "
                                               f"points canary:prometheus.address at {now}: kept, it would go to that server. Merge, then set it "
                                               "again for the new address (pulumi config set --secret --path), or keep the address by hand")], source)
            into, there = new, value
            steps = (key, *path)
            for depth, step in enumerate(steps):
                name = ".".join(map(str, steps[:depth + 1]))
                if isinstance(step, int) or not isinstance(into, dict):
                    raise InvalidSpec([Problem(".".join(map(str, steps)), "a secret", "cannot be kept where the import writes "
                                               f"{name.rsplit('.', 1)[0]}: set it again after the merge, or edit the file by hand")], source)
                if step not in into:
                    into[step] = there[step] if depth else value
                    if name not in kept:
                        kept.append(name)
                    break
                into, there = into[step], (there[step] if depth else value)
            else:
                # the import writes this very place (a whole-key secret, `canary:prometheus` held as one): merged, the
                # secret would be gone without a word
                name = ".".join(map(str, steps))
                raise InvalidSpec([Problem(name, "a secret", "is written by the import, which would drop the secret it holds: "
                                           "store its secret fields alone as secrets (pulumi config set --secret --path), "
                                           "or merge by hand")], source)
    return kept


def write_imported(path: Path, header: str, config: Mapping[str, Any], merge: bool = False) -> list[str]:
    """Write an imported stack config to ``path``, whole or not at all. A new file is created (never one that
    exists). With ``merge``, an existing stack file keeps everything but its ``canary:*`` keys, which are
    replaced by ``config`` — other namespaces, the secrets provider, the salt, their comments, and the secrets
    of the old canary keys where the import does not set their place; returns what was kept of the old
    canary keys. InvalidSpec when the file exists without ``merge``, or when the merged file would not be
    valid (nothing is written then)."""
    source = str(path)
    if not merge or not path.exists():
        try:
            files.create_text_atomic(path, header + dump({"config": dict(config)}))
        except FileExistsError:
            raise InvalidSpec([Problem("--out", source, "exists: pass --merge to replace only its canary:* keys "
                                       "(keeping every other key, the secrets and the salt), or name a new file")], source) from None
        except OSError as exc:  # no such directory, not writable: bad input, not a traceback
            raise InvalidSpec([Problem("--out", source, f"cannot be created: {exc.strerror or type(exc).__name__}")], source) from None
        return []
    with files.locked_in_place(path):
        before = read_stack_file(path)
        text = read_text(path)
        y = _yaml("rt")
        y.preserve_quotes = True
        y.indent(*_indents(text))
        document = y.load(text) or CommentedMap()
        old = document.get("config") or CommentedMap()
        imported: dict[str, Any] = json.loads(json.dumps(dict(config)))
        kept = _keep_secrets({k: v for k, v in old.items() if str(k).startswith(f"{CONFIG_NAMESPACE}:")}, imported, source)
        ours = [k for k in old if str(k).startswith(f"{CONFIG_NAMESPACE}:")]
        at = list(old).index(ours[0]) if ours else len(old)  # where the old canary keys began
        for key in ours:
            del old[key]
        for offset, (key, value) in enumerate(imported.items()):
            old.insert(at + offset, key, _literal(value))
        document["config"] = old
        out = io.StringIO()
        y.dump(document, out)
        lines = out.getvalue().splitlines(keepends=True)
        while lines and lines[0].startswith(_IMPORT_HEADER):
            lines.pop(0)
        result = header + "".join(lines)
        after_doc, _ = _load_as_pulumi(result)
        after = {str(k): stackconfig.decode_secure(v) for k, v in (after_doc.get("config") or {}).items()}
        others = {k: v for k, v in before.items() if not k.startswith(f"{CONFIG_NAMESPACE}:")}
        if {k: v for k, v in after.items() if not k.startswith(f"{CONFIG_NAMESPACE}:")} != others:
            raise InvalidSpec([Problem("--merge", source, "could not keep the file's other keys as they were; edit it by hand")], source)
        stackconfig.from_file_values(after, f"{source} merged with the import")
        files.write_text_atomic(path, result)
    return kept


def dump_stack_file(spec: StackSpec) -> str:
    """A stack config file's text for ``spec`` (secrets are never written)."""
    return dump({"config": stackconfig.to_config(spec)})
