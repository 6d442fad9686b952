"""Config of the forge (`[forge]`), kept apart to keep `conveyor.config` small.

`conveyor.config` re-exports `ForgeConfig`. The local forge can be served over
HTTP (git smart HTTP and its API, `docs/local-forge.md`): the process running the
`forge` part serves it on `host:port`, and a process whose `url` is set reaches it
there instead of through its own data directory.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from conveyor.errors import ConfigError


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors (as in `conveyor.config`)."""


class ForgeConfig(_Section, frozen=True):
    """Which forge hosts the repositories (`local`: bare repositories under data_dir)."""

    kind: str = "local"
    check_timeout_s: float = 600.0
    url: str = ""
    """The local forge served over HTTP by another process (`http://host:port`).

    Empty: the bare repositories under this process's own data directory, as on one host.
    """
    token: str = ""
    """The secret the forge's HTTP server demands and its clients send (never logged)."""
    token_file: str = ""
    """A file holding `token` (its first line); wins over `token`."""
    host: str = "127.0.0.1"
    """Where the `forge` part listens."""
    port: int = 0
    """The `forge` part's port; 0: a free one, written to `data_dir/forge.url`."""

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be http(s)://host[:port]")
            if parts.username or parts.password:
                raise ValueError("url must carry no credentials (use token or token_file)")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0-65535")

    def secret(self) -> str:
        """The token: the first line of `token_file` when set, else `token` ("" for none)."""
        if not self.token_file:
            return self.token
        try:
            text = Path(self.token_file).expanduser().read_text()
        except OSError as err:
            raise ConfigError(f"forge.token_file: cannot read {self.token_file}: {err}") from err
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"forge.token_file: {self.token_file} is empty")
        return token
