"""The line edit of a stack file that replaces `pulumi config set`/`rm` for the release's plain keys."""

from __future__ import annotations

import pytest
import yaml

from canary.stackconfig import edit_plain_keys

FILE = """\
# The team's stack. Keep the comments.
config:
  canary:app:
    name: web   # the app
    replicas: 2
  canary:stableImage: demo:v1
  canary:canaryWeight: 0
  canary:prometheus:
    address: http://prom:9090
    token:
      secure: v1:AAAA:BBBB
  # the gateway
  canary:gateway:
    parentRefs:
      - {name: lab, namespace: default}

# salt below
encryptionsalt: v1:salt:v1:xyz
"""


def test_sets_an_existing_key_and_appends_a_new_one_inside_the_config_block() -> None:
    out = edit_plain_keys(FILE, {"canaryWeight": "10", "canaryImage": "demo:v2"})
    assert out is not None
    before, after = FILE.splitlines(), out.splitlines()
    changed = [(b, a) for b, a in zip(before, after, strict=False) if b != a]
    assert changed[0] == ("  canary:canaryWeight: 0", '  canary:canaryWeight: "10"')
    # The new key goes after the block's last entry, before the trailing blank line and comment.
    assert after[after.index("      - {name: lab, namespace: default}") + 1] == '  canary:canaryImage: "demo:v2"'
    assert after[-3:] == ["", "# salt below", "encryptionsalt: v1:salt:v1:xyz"]
    doc = yaml.safe_load(out)
    assert doc["config"]["canary:canaryImage"] == "demo:v2" and doc["config"]["canary:canaryWeight"] == "10"
    assert doc["config"]["canary:prometheus"]["token"] == {"secure": "v1:AAAA:BBBB"}
    assert "# The team's stack. Keep the comments." in out and "name: web   # the app" in out


def test_removes_a_key_and_sets_others_in_one_edit() -> None:
    deployed = edit_plain_keys(FILE, {"canaryImage": "demo:v2", "canaryWeight": "50"})
    assert deployed is not None
    promoted = edit_plain_keys(deployed, {"stableImage": "demo:v2", "canaryWeight": "0"}, remove=("canaryImage",))
    assert promoted is not None
    config = yaml.safe_load(promoted)["config"]
    assert "canary:canaryImage" not in config
    assert config["canary:stableImage"] == "demo:v2" and config["canary:canaryWeight"] == "0"
    # Removing what is not there is a no-op, not an error.
    assert edit_plain_keys(promoted, {}, remove=("canaryImage",)) == promoted


def test_a_file_without_config_gets_a_config_block() -> None:
    out = edit_plain_keys("encryptionsalt: v1:x\n", {"canaryWeight": "0"})
    assert out is not None and yaml.safe_load(out) == {"encryptionsalt": "v1:x", "config": {"canary:canaryWeight": "0"}}


def test_values_that_need_quoting_stay_strings() -> None:
    out = edit_plain_keys(FILE, {"canaryImage": "registry:5000/team/demo:v2 # not a comment"})
    assert out is not None
    assert yaml.safe_load(out)["config"]["canary:canaryImage"] == "registry:5000/team/demo:v2 # not a comment"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("config: {canary:canaryWeight: 0}\n", "flow-style config"),
        ('config:\n  "canary:canaryWeight": 0\n', "a quoted key would be written twice"),
        ("config:\n  canary:canaryWeight:\n    nested: 1\n", "the key holds a mapping"),
        ("config:\n  canary:canaryWeight: |\n    0\n", "a block scalar"),
        ("config:\n  canary:canaryWeight: 0\n  canary:canaryWeight: 1\n", "a duplicate key"),
        ("config: [1, 2]\n", "config is not a mapping"),
        ("config:\n  canary:canaryWeight: [0\n", "the file does not parse"),
        ("- a list\n", "not a mapping"),
    ],
)
def test_shapes_the_edit_does_not_understand_are_left_to_the_cli(text: str, why: str) -> None:
    assert edit_plain_keys(text, {"canaryWeight": "10"}, remove=("canaryImage",)) is None, why
