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
import typing
from pathlib import Path
from typing import Any

import msgspec

from conveyor import config_nats_auth
from conveyor.errors import ConfigError, redact_credentials

SECRET_KEY = re.compile(r"(?i)(token|secret|password|api_key)$")
"""Keys whose values are secrets: read from `<key>_file`, redacted by `config show`."""
SECRET_ENV_NAME = re.compile(r"(?i)(token|secret|password|key)$")
"""Names in an agent's `env` table whose values are redacted (`ANTHROPIC_API_KEY`)."""
FILE_SUFFIX = "_file"
REDACTED = "***"


def read_files(data: dict[str, Any], base: Path, schema: type | None = None) -> None:
    """Replace every secret `<key>_file` in `data` by `<key>` = the file's content.

    `schema` is the Struct `data` decodes to: a `<key>_file` that is a field of its own
    (`forge.token_file`, read by its section) is left alone.
    """
    config_nats_auth.anchor_files(data, base)
    _walk(data, base, "", schema)


def _struct_in(tp: Any) -> type | None:
    """The Struct `tp` is, or holds as list items or dict values."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    return next((s for s in map(_struct_in, reversed(typing.get_args(tp))) if s), None)


def _walk(node: dict[str, Any], base: Path, where: str, schema: type | None) -> None:
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(schema)} if schema else {}
    for key in list(node):
        value = node[key]
        dotted = f"{where}{key}"
        inner = _struct_in(fields.get(key))
        if isinstance(value, dict) and key != "env":
            if inner is None or fields.get(key) is inner:
                _walk(value, base, f"{dotted}.", inner)
            else:  # a table of sections, e.g. [prices.<model>]
                for name, table in value.items():
                    if isinstance(table, dict):
                        _walk(table, base, f"{dotted}.{name}.", inner)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    _walk(item, base, f"{dotted}[{index}].", inner)
        elif (
            key.endswith(FILE_SUFFIX)
            and key not in fields
            and SECRET_KEY.search(key[: -len(FILE_SUFFIX)])
        ):
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
