"""docs/openapi.yaml describes exactly the machine API the app serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
IGNORED = {"HEAD", "OPTIONS"}


def _served(app) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule[len("/api/v1") :])
        path = path.replace("{offboarding_id}", "{id}").replace("{group_id}", "{id}")
        out |= {(path, m) for m in rule.methods - IGNORED}
    return out


def test_every_served_route_is_described_and_nothing_else(make_app):
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert described == _served(make_app())


def test_every_operation_answers_401_and_every_reference_resolves():
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "401" in op["responses"], (path, method)
    text = SPEC.read_text(encoding="utf-8")
    for ref in set(re.findall(r'\$ref: "#/components/(\w+)/(\w+)"', text)):
        assert ref[1] in spec["components"][ref[0]], ref
