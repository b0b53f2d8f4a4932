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
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError  # callers catch a bad file as stackfile.YAMLError, without ruamel
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.scalarstring import LiteralScalarString

from canary.adapters import files
from canary.core import config as stackconfig
from canary.core.naming import CONFIG_NAMESPACE
from canary.core.spec import StackSpec
from canary.errors import InvalidSpec, Problem

#: The keys a stack file may have beside ``config``.
STACK_FILE_KEYS = {"config", "secretsprovider", "encryptionsalt", "encryptedkey", "environment"}


# --- the project --------------------------------------------------------------------------------


def find_project_dir(start: Path | None = None) -> Path:
    """The Pulumi project: ``$CANARY_PROJECT_DIR``, else the current directory or its nearest parent
    holding ``Pulumi.yaml``. InvalidSpec when there is none."""
    if env := os.environ.get("CANARY_PROJECT_DIR"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    raise InvalidSpec([Problem("--project-dir", str(here), "holds no Pulumi.yaml, nor does any parent: run in a Pulumi project or give --project-dir")], "project")


def project_settings(project_dir: Path) -> dict[str, Any]:
    try:
        data = load(project_dir.joinpath("Pulumi.yaml").read_text())
    except (OSError, YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


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
    """A plain scalar the CLI's YAML reads as a number, infinity, NaN, timestamp or merge key."""
    if value == "<<" or re.match(r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)$", value) or re.match(r"\d{4}-\d", value):
        return True
    return value[:1] in "-+.0123456789" and set(value) <= _NUMBER_CHARS


class _AsPulumi:
    """A document as the Pulumi CLI reads it, typing a plain scalar only where both readers agree:
    null, true/false, decimal integers and simple decimals; every other scalar is a string, and
    ``differs`` notes a plain one the CLI's YAML could still type (hex, exponents, timestamps …)."""

    def __init__(self) -> None:
        self.differs = False

    def value(self, node: Node) -> Any:
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == "<<":
                    self.differs = True
                out[self.value(key)] = self.value(value)
            return out
        if isinstance(node, SequenceNode):
            return [self.value(item) for item in node.value]
        assert isinstance(node, ScalarNode)
        text = node.value
        if node.style is not None:  # quoted or a block scalar: a string, unless tagged
            if not node.tag.endswith(":str"):
                self.differs = True
            return text
        if _NULL.match(text):
            return None
        if _BOOL.match(text):
            return text.lower() == "true"
        if _INT.match(text):
            return int(text)
        if _FLOAT.match(text):
            return float(text)
        if _go_types_plain(text):
            self.differs = True
        return text


def _load_as_pulumi(text: str) -> tuple[Any, bool]:
    node = YAML(typ="rt", pure=True).compose(text)
    if node is None:
        return None, False
    reader = _AsPulumi()
    return reader.value(node), reader.differs


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
        document, _ = _load_as_pulumi(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec([Problem("file", source, f"must be valid YAML: {getattr(exc, 'problem', exc)}{where}")], source) from exc
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
        path = self.directory / f"{release}.config.yaml"
        files.write_text_atomic(path, release_config(snapshot, {**self.at_rest, self.app: dict(pins)}), mode=0o600)
        return path

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
