"""A lint of the tests themselves: ``assert_close(a) and assert_close(b)`` as a statement checks
only ``a`` (``assert_close`` returns None, so ``and`` never calls the second); nor does any
other call joined by ``and``/``or`` in an expression statement. Each check is its own statement."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_checks_are_joined_by_and_or_or_in_a_statement():
    joined = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            checks = node.value.values if isinstance(node, ast.Expr) and isinstance(node.value, ast.BoolOp) else []
            if any(isinstance(value, ast.Call) for value in checks):
                joined.append(f"{path.name}:{node.lineno}")
    assert joined == []
