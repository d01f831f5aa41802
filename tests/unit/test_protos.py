"""The proto files: generated code is current, and every rpc, field and enum value is documented."""

import re
from pathlib import Path

from lmgate.protos import codegen

PROTO = Path(codegen.__file__).parent / "lmgate" / "v1" / "inference.proto"
DECLARATION = re.compile(r"^\s*(rpc |(optional |repeated )?[\w.<>, ]+ \w+ = \d+;|\w+ = \d+;)")


def test_generated_code_is_current():
    assert codegen.stale() == [], "run `make protos` and commit the result"


def test_every_rpc_field_and_enum_value_has_a_comment_above_it():
    lines = PROTO.read_text().splitlines()
    undocumented = [
        line.strip()
        for i, line in enumerate(lines)
        if DECLARATION.match(line) and not lines[i - 1].strip().startswith("//")
    ]
    assert undocumented == []


def test_enums_have_an_unspecified_zero():
    text = PROTO.read_text()
    for enum in re.findall(r"enum (\w+) \{", text):
        assert re.search(rf"\b{re.sub(r'(?<!^)(?=[A-Z])', '_', enum).upper()}_UNSPECIFIED = 0;", text), enum
