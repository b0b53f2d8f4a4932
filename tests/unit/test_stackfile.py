"""The project's YAML files: stack files read as the CLI reads them, round-trip edits, release config files."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from canary.adapters import stackfile
from canary.errors import InvalidSpec

PROJECT_FILE = "name: canary\nruntime: python\nstackConfigDir: stacks\n"

STACK_FILE = """\
# The team's stack. Keep the comments.
config:
  canary:app:
    name: web   # the app
    image: demo:v1
    replicas: 2
    probes: {readiness: {path: /healthz, periodSeconds: 1}}
  canary:quoted: "10"
  canary:switch: on
  canary:enabled: true
  canary:analysis:
    interval: 1m
    threshold: 3
    metrics:
      - {name: p99, thresholdRange: {max: 0.5}, interval: 1:30}
  canary:query: |
    sum(rate(x[1m]))
  kubernetes:context: lab
# salt below
encryptionsalt: v1:salt:v1:xyz
"""


def project(tmp_path: Path, stack_file: str = STACK_FILE, project_file: str = PROJECT_FILE, stack: str = "dev") -> Path:
    (tmp_path / "Pulumi.yaml").write_text(project_file)
    (tmp_path / "stacks").mkdir(exist_ok=True)
    (tmp_path / "stacks" / f"Pulumi.{stack}.yaml").write_text(stack_file)
    return tmp_path


# --- reading as the CLI does ---------------------------------------------------------------------


def test_plain_config_is_the_cli_s_map_objects_as_sorted_compact_json(tmp_path: Path) -> None:
    config = stackfile.plain_config(project(tmp_path), "dev")
    assert config == {
        "canary:app": '{"image":"demo:v1","name":"web","probes":{"readiness":{"path":"/healthz","periodSeconds":1}},"replicas":2}',
        "canary:quoted": "10",
        "canary:switch": "on",
        "canary:enabled": "true",
        "canary:analysis": '{"interval":"1m","metrics":[{"interval":"1:30","name":"p99","thresholdRange":{"max":0.5}}],"threshold":3}',
        "canary:query": "sum(rate(x[1m]))\n",
        "kubernetes:context": "lab",
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("  canary:prometheus: {token: {secure: v1:AAAA}}", "a secret to decrypt"),
        ("  canary:ratio: 0.5", "a top-level float: Go prints it"),
        ("  canary:empty:", "a top-level null"),
        ("  canary:big: 1e3", "an exponent: a float to the CLI, a string to this loader"),
        ("  canary:mask: 0x1F", "hex"),
        ("  canary:mode: 010", "an octal to the CLI"),
        ("  canary:many: 1_000", "underscores in a number"),
        ("  canary:when: 2026-11-27", "a timestamp"),
        ("  canary:limit: .inf", "infinity"),
        ("  canary:app: {name: web, weight: 0x10}", "a nested number the CLI types"),
        ("  canary:app: {ratio: 1.0}", "a whole float: Go's JSON writes 1"),
        ("  canary:app: {ratio: 0.00001}", "a small float: Python writes 1e-05, Go 0.00001"),
        ("  canary:app: {big: 99999999999999999999}", "beyond int64: a float to the CLI"),
        ('  canary:app: !!int "10"', "an explicit tag on a quoted scalar"),
        ("  plainkey: 1", "a key without its namespace"),
    ],
)
def test_plain_config_leaves_to_the_cli_what_it_might_read_differently(tmp_path: Path, line: str, why: str) -> None:
    assert stackfile.plain_config(project(tmp_path, "config:\n" + line + "\n"), "dev") is None, why


def test_plain_config_reads_quoted_forms_of_those_values(tmp_path: Path) -> None:
    config = stackfile.plain_config(project(tmp_path, 'config:\n  canary:big: "1e3"\n  canary:when: "2026-11-27"\n  canary:app: {weight: "0x10", note: null}\n'), "dev")
    assert config == {"canary:big": "1e3", "canary:when": "2026-11-27", "canary:app": '{"note":null,"weight":"0x10"}'}


@pytest.mark.parametrize(
    ("stack_file", "project_file"),
    [
        ("environment: [prod]\nconfig:\n  canary:a: b\n", PROJECT_FILE),
        ("config:\n  canary:a: b\n", PROJECT_FILE + "config:\n  canary:a: {default: c}\n"),
        ("config: [a, b]\n", PROJECT_FILE),
        ("config:\n  canary:a: [b\n", PROJECT_FILE),
    ],
    ids=["esc-environment", "project-level-config", "config-not-a-mapping", "bad-yaml"],
)
def test_plain_config_leaves_other_files_to_the_cli(tmp_path: Path, stack_file: str, project_file: str) -> None:
    assert stackfile.plain_config(project(tmp_path, stack_file, project_file), "dev") is None


def test_plain_config_of_a_snapshot_reads_the_text_given(tmp_path: Path) -> None:
    root = project(tmp_path)
    assert stackfile.plain_config(root, "dev", "config:\n  canary:x: y\n") == {"canary:x": "y"}
    assert stackfile.plain_config(tmp_path / "nowhere", "dev") is None


def test_validation_reads_scalars_as_pulumi_does(tmp_path: Path) -> None:
    path = project(tmp_path, "config:\n  canary:a: on\n  canary:b: {c: no, d: 1:30, e: 3, f: ~, g: {secure: v1:x}}\n") / "stacks" / "Pulumi.dev.yaml"
    assert stackfile.read_stack_file(path) == {"canary:a": "on", "canary:b": {"c": "no", "d": "1:30", "e": 3, "f": None, "g": "<encrypted>"}}


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("config: [1, 2", "must be valid YAML"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("config: 3\n", "must be a mapping"),
        ("confi:\n  canary:app: {}\n", "is not a stack file key"),
    ],
)
def test_bad_stack_files_are_invalid_input_naming_the_problem(tmp_path: Path, text: str, rule: str) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidSpec, match=rule):
        stackfile.load_stack_file(path)


def test_a_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text("config:\n  canary:app: {name: web\n  canary:x: 1\n")
    with pytest.raises(InvalidSpec, match=r"at line \d+, column \d+"):
        stackfile.read_stack_file(path)


def test_a_missing_stack_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="does not exist"):
        stackfile.load_stack_file(tmp_path / "Pulumi.none.yaml")


def test_the_release_key_is_refused_in_a_stack_file(tmp_path: Path) -> None:
    from tests.conftest import ROOT

    path = tmp_path / "Pulumi.x.yaml"
    path.write_text((ROOT / "stacks" / "Pulumi.dev.yaml").read_text() + "  canary:release: {web: {}}\n")
    with pytest.raises(InvalidSpec, match="written by canary into its release config files only"):
        stackfile.load_stack_file(path)


# --- the project ---------------------------------------------------------------------------------


def test_the_project_is_found_from_a_subdirectory_and_its_stack_config_dir_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path)
    (root / "src" / "deep").mkdir(parents=True)
    monkeypatch.delenv("CANARY_PROJECT_DIR", raising=False)
    monkeypatch.chdir(root / "src" / "deep")
    assert stackfile.find_project_dir() == root
    assert stackfile.stack_file(root, "dev") == root / "stacks" / "Pulumi.dev.yaml"
    assert stackfile.stack_file(root, "acme/shop/dev") == root / "stacks" / "Pulumi.dev.yaml"  # org-qualified: the short name
    (root / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    assert stackfile.stack_file(root, "dev") == root / "Pulumi.dev.yaml"


def test_no_project_is_bad_input_naming_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANARY_PROJECT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidSpec, match="--project-dir"):
        stackfile.find_project_dir(tmp_path)


# --- edits ---------------------------------------------------------------------------------------


def test_set_value_edits_one_nested_key_and_keeps_everything_else(tmp_path: Path) -> None:
    text = STACK_FILE.replace("  kubernetes:context: lab\n", "  kubernetes:context: lab\n  canary:prometheus:\n    token:\n      secure: v1:AAAA:BBBB\n")
    path = project(tmp_path, text) / "stacks" / "Pulumi.dev.yaml"
    old, new = stackfile.set_value(path, ("canary:app", "image"), "demo:v2")
    assert (old, new) == ("demo:v1", "demo:v2")
    after = path.read_text()
    expected = text.replace("image: demo:v1", "image: demo:v2")
    # every line as it was (comments, order, indentation, secure values, the salt) but the edited one;
    # ruamel may move an end-of-line comment's column
    assert [line.split("#")[0].rstrip() for line in after.splitlines()] == [line.split("#")[0].rstrip() for line in expected.splitlines()]
    assert "# the app" in after and "# The team's stack. Keep the comments." in after and "secure: v1:AAAA:BBBB" in after


def test_set_value_keeps_a_flow_sequence_of_one_entry_mappings_as_written(tmp_path: Path) -> None:
    # `canary release --image` rewrote `[{name: public}]` as `[name: public]` (the same YAML): a line of the team's
    # stack file beside the one it set, changed in their repository's diff for no reason they could see
    text = STACK_FILE.replace("  kubernetes:context: lab\n", "  kubernetes:context: lab\n  canary:gateway:\n    parentRefs: [{name: public}, {name: internal}]\n"
                              "    hostnames: [shop.example.com]\n")
    path = project(tmp_path, text) / "stacks" / "Pulumi.dev.yaml"
    stackfile.set_value(path, ("canary:app", "image"), "demo:v2")
    after = path.read_text()
    assert "    parentRefs: [{name: public}, {name: internal}]\n    hostnames: [shop.example.com]\n" in after, after
    assert [line for line in after.splitlines() if line not in text.splitlines()] == ["    image: demo:v2"], after


def test_set_value_adds_a_missing_key(tmp_path: Path) -> None:
    path = project(tmp_path, "config:\n  canary:app: {name: web}\nencryptionsalt: v1:x\n") / "stacks" / "Pulumi.dev.yaml"
    stackfile.set_value(path, ("canary:app", "image"), "demo:v2")
    assert stackfile.read_stack_file(path) == {"canary:app": {"name": "web", "image": "demo:v2"}}
    assert "encryptionsalt: v1:x" in path.read_text()


def test_set_value_removes_a_key_it_added(tmp_path: Path) -> None:
    text = "config:\n  # the app\n  canary:app: {name: web}\nencryptionsalt: v1:x\n"
    path = project(tmp_path, text) / "stacks" / "Pulumi.dev.yaml"
    assert stackfile.set_value(path, ("canary:app", "image"), "demo:v2") == (stackfile.ABSENT, "demo:v2")
    assert stackfile.set_value(path, ("canary:app", "image"), stackfile.ABSENT) == ("demo:v2", stackfile.ABSENT)
    assert stackfile.read_stack_file(path) == {"canary:app": {"name": "web"}}
    assert "# the app" in path.read_text()


def test_concurrent_edits_of_different_keys_lose_nothing(tmp_path: Path) -> None:
    """Two releases of two apps set their images at once: both edits land (the file is locked)."""
    text = "config:\n  canary:apps:\n" + "".join(f"    a{i}:\n      app: {{name: a{i}, image: demo:v1}}\n" for i in range(8))
    path = project(tmp_path, text) / "stacks" / "Pulumi.dev.yaml"
    threads = [threading.Thread(target=stackfile.set_value, args=(path, ("canary:apps", f"a{i}", "app", "image"), f"demo:v{i + 2}")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    apps = stackfile.read_stack_file(path)["canary:apps"]
    assert {name: app["app"]["image"] for name, app in apps.items()} == {f"a{i}": f"demo:v{i + 2}" for i in range(8)}


def test_an_edit_leaves_no_lock_file_in_the_users_repository(tmp_path: Path) -> None:
    """The stack file lives in the team's repository: a release's edit of its image leaves nothing beside
    it for ``git status`` to show (an import's merge: test_flagger_import)."""
    path = project(tmp_path) / "stacks" / "Pulumi.dev.yaml"
    before = sorted(p.name for p in path.parent.iterdir())
    stackfile.set_value(path, ("canary:app", "image"), "demo:v2")
    assert sorted(p.name for p in path.parent.iterdir()) == before
    assert stackfile.read_stack_file(path)["canary:app"]["image"] == "demo:v2"


def test_release_config_is_the_snapshot_with_the_pins(tmp_path: Path) -> None:
    snapshot = STACK_FILE
    pins = {"web": {"release": "r1", "stable": {"hash": "a"}, "route": {"weight": 20}}}
    text = stackfile.release_config(snapshot, pins)
    config = stackfile.load(text)["config"]
    assert config["canary:release"] == pins and config["canary:app"]["image"] == "demo:v1"
    assert "encryptionsalt: v1:salt:v1:xyz" in text and "# The team's stack. Keep the comments." in text


def test_release_configs_name_what_changed_in_the_stack_file_and_keep_it(tmp_path: Path) -> None:
    path = project(tmp_path) / "stacks" / "Pulumi.dev.yaml"
    configs = stackfile.ReleaseConfigs(path, tmp_path, "web")
    written = configs.write("r1", STACK_FILE, {"release": "r1"})
    assert stackfile.load(written.read_text())["config"]["canary:release"] == {"web": {"release": "r1"}}
    assert configs.changes_since(STACK_FILE) == {}
    path.write_text(STACK_FILE.replace("replicas: 2", "replicas: 2\n    env: {LOG_LEVEL: debug}"))
    changes = configs.changes_since(STACK_FILE)
    assert changes == {"canary:app.env": {"LOG_LEVEL": "debug"}}
    kept = configs.keep("r1", changes)
    assert kept is not None and kept.name == "Pulumi.dev.yaml.r1.unapplied" and "LOG_LEVEL: debug" in kept.read_text()


def test_manifests_and_dumps() -> None:
    docs = stackfile.load_manifests([("a.yaml", "kind: Canary\n---\n---\nkind: MetricTemplate\n")])
    assert [d["kind"] for d in docs] == ["Canary", "MetricTemplate"]
    with pytest.raises(InvalidSpec, match="a.yaml"):
        stackfile.load_manifests([("a.yaml", "kind: [\n")])
    with pytest.raises(InvalidSpec, match="with a kind"):
        stackfile.load_manifests([("a.yaml", "- 1\n")])
    text = stackfile.dump({"q": "a\nb\n", "n": 2.0, "f": 0.5})
    assert "q: |" in text and "n: 2\n" in text and json.loads(json.dumps(stackfile.load(text))) == {"q": "a\nb\n", "n": 2, "f": 0.5}


def test_a_rollback_names_only_its_own_app_s_changes_in_a_stack_of_several(tmp_path: Path) -> None:
    """Another app of the stack released meanwhile edited its own image: that is its release's, not a
    change this app's rollback left unapplied."""
    path = project(tmp_path) / "stacks" / "Pulumi.dev.yaml"
    several = ("config:\n  canary:apps:\n    web: {app: {name: web, image: demo:v1}}\n    api: {app: {name: api, image: demo:v1}}\n"
               "  other:setting: 1\n")
    path.write_text(several)
    configs = stackfile.ReleaseConfigs(path, tmp_path, "web")
    path.write_text(several.replace("api, image: demo:v1", "api, image: demo:v2").replace("web, image: demo:v1", "web, image: demo:v1, replicas: 3")
                    .replace("setting: 1", "setting: 2"))
    assert configs.changes_since(several) == {"canary:apps.web.app.replicas": 3, "other:setting": 2}


# --- the image key a component's image_config names ----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "written"), [("image", "shop:image"), ("shop:image", "shop:image"), ("shop:web.image", "shop:web")])
def test_set_image_writes_an_image_config_key_in_its_namespace_a_bare_one_the_project_s(tmp_path: Path, key: str, written: str) -> None:
    # `image` (what pulumi.Config().require("image") reads) was written as a bare `image:` beside `shop:image`, which
    # the program never read and `canary validate` called not a known field
    from canary import api

    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  shop:image: web:1\n  shop:web:\n    image: web:1\n")
    assert api.set_image("prod", "web:2", app="web", project_dir=tmp_path, image_config=key) == ("web", "web:1")
    config = stackfile.load(path.read_text())["config"]
    assert set(config) == {"shop:image", "shop:web"}, config
    assert (config[written]["image"] if written == "shop:web" else config[written]) == "web:2"


@pytest.mark.parametrize("key", ["shop image", "canary:image", "a:b:c", ""])
def test_set_image_refuses_an_image_config_that_is_no_key_of_the_program_and_leaves_the_file(tmp_path: Path, key: str) -> None:
    from canary import api

    (tmp_path / "Pulumi.yaml").write_text("name: shop\nruntime: python\n")
    path = tmp_path / "Pulumi.prod.yaml"
    path.write_text("config:\n  shop:image: web:1\n")
    with pytest.raises(InvalidSpec) as info:
        api.set_image("prod", "web:2", app="web", project_dir=tmp_path, image_config=key)
    (problem,) = info.value.problems
    assert problem.field == "image_config" and problem.value == repr(key), problem
    assert path.read_text() == "config:\n  shop:image: web:1\n"
