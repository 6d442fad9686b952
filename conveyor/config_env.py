"""Environment overrides of the configuration: `CONVEYOR_<SECTION>__<KEY>=<TOML value>`."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from conveyor.errors import ConfigError

ENV_PREFIX = "CONVEYOR_"


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def overlay_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay `CONVEYOR_SECTION__KEY=value` variables on the TOML data (values parse as TOML)."""
    for name, raw in sorted(env.items()):
        if name == f"{ENV_PREFIX}DATA_DIR":
            data["data_dir"] = raw
            continue
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = _env_path(name[len(ENV_PREFIX) :])
        if not all(path):
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} is not a section")
            node = child
        node[path[-1]] = _parse_value(raw)
    return data


def _env_path(rest: str) -> list[str]:
    """Split `SECTION__KEY`; keys under an `env` table keep their case (API_KEY stays)."""
    parts = rest.split("__")
    out: list[str] = []
    for index, part in enumerate(parts):
        out.append(part.lower())
        if part.lower() == "env" and index + 1 < len(parts):
            out.extend(parts[index + 1 :])
            break
    return out
