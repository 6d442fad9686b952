"""The tiny demo repository Conveyor seeds for `conveyor demo` and the end-to-end tests.

Standard library only, so its check command runs on a bare machine. The demo
agent's developer adds `features/<id>.py` and `tests/test_<id>.py`; both are
found by `DEMO_CHECK_COMMAND` because `tests/` is a package and discovery runs
with the repository root as the top-level directory.
"""

from __future__ import annotations

import sys

DEMO_CHECK_COMMAND: list[str] = [
    sys.executable,
    "-m",
    "unittest",
    "discover",
    "-s",
    "tests",
    "-t",
    ".",
]
"""Argv (never a shell line) that runs the demo repository's tests from its root."""

_README = """\
# demo

A tiny Python repository that Conveyor's demo pipeline delivers work items into.

Run the tests from the repository root:

    python -m unittest discover -s tests -t .
"""

_CALC = '''\
"""Arithmetic the demo features build on."""


def add(a: int, b: int) -> int:
    """Return the sum of `a` and `b`."""
    return a + b
'''

_TESTS_INIT = '"""Tests of the demo repository."""\n'

_TEST_CALC = '''\
"""Tests of `calc`."""

import unittest

from calc import add


class AddTest(unittest.TestCase):
    def test_add_sums_two_numbers(self) -> None:
        self.assertEqual(add(2, 3), 5)

    def test_add_handles_negatives(self) -> None:
        self.assertEqual(add(-2, 1), -1)


if __name__ == "__main__":
    unittest.main()
'''

_GITIGNORE = "__pycache__/\n"


def create_demo_files() -> dict[str, bytes]:
    """Return the demo repository's initial files: POSIX relative path -> content."""
    return {
        "README.md": _README.encode(),
        "calc/__init__.py": _CALC.encode(),
        "tests/__init__.py": _TESTS_INIT.encode(),
        "tests/test_calc.py": _TEST_CALC.encode(),
        ".gitignore": _GITIGNORE.encode(),
    }
