"""Regenerate canary/core/podschema.json from the kubernetes client's models.

The pure core validates pod templates, autoscaler metrics and behaviours, and Service specs,
against the field names and types of the Kubernetes API, without importing the
kubernetes client (an adapter's library). The client's generated models carry
that schema (``openapi_types`` and ``attribute_map`` for the fields,
pydantic's ``model_fields`` for which are required); this script writes the part reachable from the
roots below as compact JSON. A test checks the file is what this script writes
for the pinned client.

    .venv/bin/python tools/gen_pod_schema.py        # rewrite the file
    .venv/bin/python tools/gen_pod_schema.py --check
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import kubernetes
import kubernetes.client.models as models

ROOTS = ("V1PodTemplateSpec", "V2MetricSpec", "V2HorizontalPodAutoscalerBehavior", "V1ServiceSpec")
SCALARS = {"str": "string", "int": "integer", "bool": "boolean", "float": "number", "object": "any", "datetime": "string", "date": "string"}
OUT = Path(__file__).resolve().parent.parent / "canary" / "core" / "podschema.json"


def _type(spec: str) -> object:
    spec = spec.strip()
    if match := re.fullmatch(r"(?:list|List)\[(.+)\]", spec):
        return ["list", _type(match.group(1))]
    if match := re.fullmatch(r"(?:dict|Dict)[\[(]str, (.+)[\])]", spec):
        return ["map", _type(match.group(1))]
    return SCALARS.get(spec, spec)


def build() -> dict[str, object]:
    kinds: dict[str, dict[str, object]] = {}

    def walk(name: str) -> None:
        if name in kinds:
            return
        cls = getattr(models, name)
        required = sorted(cls.attribute_map[py] for py, field in cls.model_fields.items() if field.is_required())
        fields = {cls.attribute_map[py]: _type(typ) for py, typ in cls.openapi_types.items()}
        kinds[name] = {"fields": fields, "required": required}
        for typ in cls.openapi_types.values():
            for token in re.findall(r"[A-Za-z_]\w*", typ):
                if token not in SCALARS and token not in ("list", "List", "dict", "Dict"):
                    walk(token)

    for root in ROOTS:
        walk(root)
    return {"client": kubernetes.__version__, "roots": list(ROOTS), "kinds": dict(sorted(kinds.items()))}


def main(argv: list[str]) -> int:
    text = json.dumps(build(), sort_keys=True, separators=(",", ":")) + "\n"
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run tools/gen_pod_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
