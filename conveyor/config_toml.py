"""A TOML writer for the configuration as builtins (`conveyor config show`).

Covers what a `Config` turns into: tables, arrays of tables, scalars and arrays of
scalars. `tomllib.loads(dumps(x)) == x` for such data.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(data: dict[str, Any]) -> str:
    """`data` as a TOML document."""
    lines: list[str] = []
    _table(data, [], lines, header="")
    return "\n".join(lines).strip() + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(node: dict[str, Any], path: list[str], lines: list[str], *, header: str) -> None:
    if header:
        lines.extend(["", header])
    nested = {k: v for k, v in node.items() if isinstance(v, dict) or _is_table_array(v)}
    lines.extend(f"{_key(k)} = {_value(v)}" for k, v in node.items() if k not in nested)
    for key, value in nested.items():
        sub = [*path, _key(key)]
        if isinstance(value, dict):
            _table(value, sub, lines, header=f"[{'.'.join(sub)}]")
        else:
            for item in value:
                _table(item, sub, lines, header=f"[[{'.'.join(sub)}]]")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return f"[{', '.join(_value(item) for item in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
