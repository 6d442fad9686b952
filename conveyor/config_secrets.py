"""Secrets read from files, and the rule that says which keys are secrets.

Any secret key (`gitea.token`, `plane.api_key`, `telegram.bot_token`, a
`webhook_secret`, a `password`…) can instead be given as `<key>_file`: a path whose
content (without the trailing newline) becomes the value. That works in
`config.toml` and through the environment (`CONVEYOR_GITEA__TOKEN_FILE=/run/secrets/gitea`),
so a secret need not sit in a file that is also printed, diffed or backed up.
Relative paths are read from the config file's directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conveyor import config_nats
from conveyor.errors import ConfigError, redact_credentials

SECRET_KEY = re.compile(r"(?i)(token|secret|password|api_key)$")
"""Keys whose values are secrets: read from `<key>_file`, redacted by `config show`."""
SECRET_ENV_NAME = re.compile(r"(?i)(token|secret|password|key)$")
"""Names in an agent's `env` table whose values are redacted (`ANTHROPIC_API_KEY`)."""
FILE_SUFFIX = "_file"
REDACTED = "***"


def read_files(data: dict[str, Any], base: Path) -> None:
    """Replace every secret `<key>_file` in `data` by `<key>` = the file's content."""
    config_nats.anchor_files(data, base)
    _walk(data, base, "")


def _walk(node: dict[str, Any], base: Path, where: str) -> None:
    for key in list(node):
        value = node[key]
        dotted = f"{where}{key}"
        if isinstance(value, dict) and key != "env":
            _walk(value, base, f"{dotted}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    _walk(item, base, f"{dotted}[{index}].")
        elif key.endswith(FILE_SUFFIX) and SECRET_KEY.search(key[: -len(FILE_SUFFIX)]):
            node[key[: -len(FILE_SUFFIX)]] = _read(node.pop(key), base, dotted, node, key)


def _read(path: Any, base: Path, dotted: str, node: dict[str, Any], key: str) -> str:
    stem = key[: -len(FILE_SUFFIX)]
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{dotted}: expected a file path")
    if node.get(stem):
        raise ConfigError(f"{dotted}: set {stem} or {key}, not both")
    full = (base / Path(path).expanduser()).resolve()
    try:
        return full.read_text().rstrip("\r\n")
    except OSError as err:
        raise ConfigError(f"{dotted}: cannot read {full}: {err.strerror}") from err


def redact(data: Any, key: str = "") -> Any:
    """`data` (a config as builtins) with secret values and URL credentials replaced."""
    if isinstance(data, dict):
        if key == "env":
            return {k: REDACTED if v and SECRET_ENV_NAME.search(k) else v for k, v in data.items()}
        return {k: redact(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(item, key) for item in data]
    if isinstance(data, str):
        if data and SECRET_KEY.search(key):
            return REDACTED
        return redact_credentials(data)
    return data
