"""config/example.env lists every variable the plugin reads, and nothing it does not."""

import re
from pathlib import Path

from tests.conftest import SETTING_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_example_env_lists_every_setting_with_a_comment():
    lines = (ROOT / "config" / "example.env").read_text(encoding="utf-8").splitlines()
    listed = {}
    for index, line in enumerate(lines):
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            listed[match.group(1)] = index
    assert SETTING_NAMES | {"PORT", "WEB_CONCURRENCY"} == set(listed)
    for name, index in listed.items():
        previous = lines[index - 1]
        assert previous.startswith("#") or re.match(r"^[A-Z_0-9]+=", previous), f"{name} has no comment"
