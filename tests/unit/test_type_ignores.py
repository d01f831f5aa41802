"""The type checker's exceptions stay few and explained: each `# type: ignore[code]` in server/ and
backends/ (the strictly checked parts, `make typecheck`) says why on the same line."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<code>\[[a-z-, ]+\])?(?P<rest>.*)$")


def unexplained(lines: list[str]) -> list[int]:
    """Line numbers (from 1) of the ignores without a code or without a `# reason` after it."""
    bad = []
    for number, line in enumerate(lines, start=1):
        if (match := IGNORE.search(line)) and (not match["code"] or not re.match(r"\s*#\s*\S", match["rest"])):
            bad.append(number)
    return bad


def test_every_type_ignore_names_its_code_and_gives_a_reason():
    found = {
        str(path.relative_to(ROOT)): bad
        for part in ("server", "backends")
        for path in sorted((ROOT / part).rglob("*.py"))
        if (bad := unexplained(path.read_text().splitlines()))
    }
    assert found == {}, "write `# type: ignore[code]  # why` (or fix the type) at these lines"


def test_a_bare_or_unexplained_ignore_is_found():
    lines = [
        "x = f()  # type: ignore",
        "y = g()  # type: ignore[attr-defined]",
        "z = h()  # type: ignore[misc]  # vllm is untyped here",
    ]
    assert unexplained(lines) == [1, 2]
