"""Config of the operator's web board and `/metrics` (`[board]`).

Kept apart to keep `conveyor.config` small; `conveyor.config` imports `BoardConfig`.

Both are served by the gateway's HTTP server. They are read-only, but what they show
(titles, costs, hosts) is not for everyone: on an address other than loopback they are
served only when a token is configured, and a configured token is always required.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import msgspec

from conveyor.errors import ConfigError


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors (as in `conveyor.config`)."""


class BoardConfig(_Section, frozen=True):
    """The web board at `/board` and the Prometheus metrics at `/metrics`."""

    enabled: bool = True
    metrics: bool = True
    token: str = ""
    """Bearer token both need (`CONVEYOR_BOARD__TOKEN`); empty: loopback only."""
    token_file: str = ""
    """A file holding the token (read at start), for secrets kept out of the config."""
    refresh_s: float = 2.0
    """How long one read of the status subjects serves the board and scrapes."""
    alerts_kept: int = 50

    def secret(self) -> str:
        """The token: `token`, else the first line of `token_file`, else empty."""
        if self.token or not self.token_file:
            return self.token
        try:
            lines = Path(self.token_file).expanduser().read_text().splitlines()
        except OSError as err:
            raise ConfigError(f"board.token_file: cannot read: {err.strerror}") from err
        return lines[0].strip() if lines else ""


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_board(cfg: BoardConfig) -> None:
    """Cross-field rules of `[board]`; raise ConfigError naming the key."""
    if cfg.refresh_s <= 0:
        raise ConfigError("board.refresh_s: must be > 0")
    if not 1 <= cfg.alerts_kept <= 1000:
        raise ConfigError("board.alerts_kept: must be within 1..1000")
