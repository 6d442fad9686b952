"""docs/configuration.md documents exactly the keys of `conveyor.config`, each with its default.

The doc's "Every key" tables are read as they are: a `### \\`[section]\\`` heading
names the section, each row of a `| key | type | default | meaning and rule |`
table names a key, and the first code span of its default cell is the default
(a TOML value, or the word `required`). A row may cover a run of keys
(`` `states.in_progress` … `states.done` ``) with one code span per key. Rows other
contributors add are checked like every other row, so a key added to the schema
needs its row, and a row needs its key.
"""

from __future__ import annotations

import re
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conveyor import config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
HEADER = re.compile(r"^\|\s*key\s*\|\s*type\s*\|\s*default\s*\|")
HEADING = re.compile(r"^#{3,4}\s+(.*?)\s*$")
CODE = re.compile(r"`([^`]+)`")
PLACEHOLDER = re.compile(r'"?<[^>]*>"?')
REQUIRED = "required"
WORDY: set[str] = set()
"""Keys (lists of tables) whose default the doc may describe in words instead of a value."""
WORDS = object()


def _norm(key: str) -> str:
    """`prices."<model>".input` and `agents.<role>.cli` as the schema spells them."""
    return PLACEHOLDER.sub("<>", key)


# --- the schema ---------------------------------------------------------------------------


def _struct(tp: Any) -> type[msgspec.Struct] | None:
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return REQUIRED


def _schema(struct: type[msgspec.Struct], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, default) of every key under `struct`; maps of tables use `<>`."""
    fields = msgspec.structs.fields(struct)
    kinds = {_struct(f.type) for f in fields}
    if len(fields) > 1 and len(kinds) == 1 and None not in kinds:
        # A table per name (one per agent role): documented once, as `<role>`.
        (inner,) = kinds
        assert inner is not None
        yield from _schema(inner, f"{prefix}<>.")
        return
    for field in fields:
        key = f"{prefix}{field.name}"
        inner = _struct(field.type)
        args = typing.get_args(field.type)
        origin = typing.get_origin(field.type)
        if inner is not None:
            yield from _schema(inner, f"{key}.")
        elif origin is dict and _struct(args[1]) is not None:
            yield from _schema(args[1], f"{key}.<>.")
        elif origin is list and _struct(args[0]) is not None:
            WORDY.add(key)
            yield key, _builtin(_default(field))
            yield from _schema(args[0], f"{key}.")
        else:
            yield key, _builtin(_default(field))


def _builtin(value: Any) -> Any:
    return value if value == REQUIRED else msgspec.to_builtins(value)


def schema_keys() -> dict[str, Any]:
    return dict(_schema(config.Config))


# --- the doc ------------------------------------------------------------------------------


def _section(title: str) -> str | None:
    """The key prefix a heading names: `[nats]` -> `nats.`, `Top level` -> ``."""
    if title == "Top level":
        return ""
    found = re.fullmatch(r"`\[{1,2}([^\]]+)\]{1,2}`", title)
    return f"{found.group(1)}." if found else None


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _value(text: str) -> Any:
    if text == REQUIRED:
        return REQUIRED
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as err:
        raise AssertionError(f"default `{text}` is not a TOML value: {err}") from err


def _rows() -> Iterator[tuple[str, str, str, str]]:
    """(section prefix, key cell, default cell, line) of every key row under "Every key"."""
    lines = DOC.read_text().splitlines()
    start = lines.index("## Every key")
    section: str | None = None
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            return
        heading = HEADING.match(line)
        if heading:
            section, in_table = _section(heading.group(1)), False
        elif HEADER.match(line):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = _cells(line)
            if section is not None and len(cells) >= 3:
                yield section, cells[0], cells[2], line
        elif not line.startswith("|"):
            in_table = False


def doc_keys(schema: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Dotted key -> (documented default, the row), runs of keys expanded by the schema."""
    found: dict[str, tuple[Any, str]] = {}
    for section, key_cell, default_cell, line in _rows():
        names = CODE.findall(key_cell)
        assert names, f"a row without a key: {line}"
        keys = [_norm(n if n.startswith(section) and section else f"{section}{n}") for n in names]
        if len(keys) == 2 and "…" in key_cell:
            order = list(schema)
            assert set(keys) <= set(order), f"unknown run of keys: {line}"
            keys = order[order.index(keys[0]) : order.index(keys[1]) + 1]
        defaults = CODE.findall(default_cell) or [default_cell]
        if len(keys) > 1:
            assert len(defaults) == len(keys), f"{len(keys)} keys, {len(defaults)} defaults: {line}"
        for i, key in enumerate(keys):
            assert key not in found, f"{key} is documented twice"
            text = defaults[i] if len(keys) > 1 else defaults[0]
            if key in WORDY and text == default_cell:
                found[key] = (WORDS, line)  # described in words, e.g. "the seven stages below"
            else:
                found[key] = (_value(text), line)
    return found


# --- the tests ----------------------------------------------------------------------------


def test_the_doc_is_read_at_all() -> None:
    documented = doc_keys(schema_keys())
    # Guards the parser: a format change that reads nothing must not pass silently.
    assert {"data_dir", "nats.url", "agents.<>.cli", "plane.states.done"} <= set(documented)
    assert len(documented) > 100


def test_every_schema_key_is_documented() -> None:
    schema = schema_keys()
    missing = sorted(set(schema) - set(doc_keys(schema)))
    assert missing == [], f"keys of conveyor/config.py without a row in {DOC.name}: {missing}"


def test_every_documented_key_exists_in_the_schema() -> None:
    schema = schema_keys()
    unknown = sorted(set(doc_keys(schema)) - set(schema))
    assert unknown == [], f"rows of {DOC.name} naming no key of conveyor/config.py: {unknown}"


def test_every_documented_default_is_the_schema_default() -> None:
    schema = schema_keys()
    wrong = [
        f"{key}: documented {documented!r}, schema {schema[key]!r}"
        for key, (documented, _line) in sorted(doc_keys(schema).items())
        if key in schema and documented is not WORDS and not _same(documented, schema[key])
    ]
    assert wrong == []


def _same(documented: Any, default: Any) -> bool:
    if isinstance(default, float) and isinstance(documented, int | float):
        return float(documented) == default and not isinstance(documented, bool)
    return bool(documented == default) and type(documented) is type(default)


@pytest.mark.parametrize(
    ("documented", "default", "same"),
    [
        (5.0, 5.0, True),
        (5, 5.0, True),
        (True, 1, False),
        ("", "", True),
        ([], [], True),
        (3, 4, False),
        ("0", 0, False),
    ],
)
def test_defaults_compare_by_value_and_kind(documented: Any, default: Any, same: bool) -> None:
    assert _same(documented, default) is same


def test_a_wrong_or_missing_row_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOC.read_text()
    broken = text.replace("| `port` | int | `0` |", "| `port` | int | `1` |", 1).replace(
        "| `tick_s` | float | `1.0` |", "| `tick_z` | float | `1.0` |", 1
    )
    assert broken != text
    doc = tmp_path / "configuration.md"
    doc.write_text(broken)
    monkeypatch.setattr(sys.modules[__name__], "DOC", doc)
    schema = schema_keys()
    documented = doc_keys(schema)
    assert not _same(documented["nats.port"][0], schema["nats.port"])
    assert set(schema) - set(documented) == {"queue.tick_s"}
    assert set(documented) - set(schema) == {"queue.tick_z"}
