"""How this process connects to NATS: credentials, nkey, TLS, and connection events.

`[nats]` holds `creds_file`, `nkey_seed_file` and a `[nats.tls]` table (`NatsTls`).
The CLI calls `use(cfg.nats)` once the configuration is loaded; every `Bus.connect`
of the process then passes `connect_options(url, name)` to `nats.connect`, so the
daemon's parts and the CLI's client reach an external server the same way. Without
`use` (tests, the embedded server) only the event callbacks are added. Clustering
(`servers`, `replicas`) is `conveyor.config_nats`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from conveyor import logs
from conveyor.errors import ConfigError

if TYPE_CHECKING:
    from conveyor.config import NatsConfig

log = logs.get_logger(__name__)


class NatsTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TLS to an external NATS: a CA to trust and, for mutual TLS, a client certificate."""

    ca_file: str = ""
    """PEM CA bundle that signed the server's certificate (empty: the system's CAs)."""
    cert_file: str = ""
    """PEM client certificate, for servers that verify clients (`verify: true`)."""
    key_file: str = ""
    """PEM private key of `cert_file`."""

    @property
    def enabled(self) -> bool:
        """Whether any TLS option is set (a `tls://` url alone also turns TLS on)."""
        return bool(self.ca_file or self.cert_file or self.key_file)


FILE_KEYS = ("creds_file", "nkey_seed_file")
TLS_FILE_KEYS = ("ca_file", "cert_file", "key_file")

_profile: NatsConfig | None = None


def use(nats_cfg: NatsConfig | None) -> None:
    """Make `nats_cfg`'s credentials and TLS the ones every connection of this process uses."""
    global _profile  # noqa: PLW0603 - one connection profile per process, like logging
    _profile = nats_cfg


def anchor_files(data: dict[str, Any], base: Path) -> None:
    """Resolve relative `[nats]` file paths against the config file's directory."""
    nats = data.get("nats")
    if not isinstance(nats, dict):
        return
    tables: list[tuple[dict[str, Any], tuple[str, ...]]] = [(nats, FILE_KEYS)]
    if isinstance(nats.get("tls"), dict):
        tables.append((nats["tls"], TLS_FILE_KEYS))
    for table, keys in tables:
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                table[key] = str(base / value)


def problems(nats_cfg: NatsConfig, *, external: bool = False) -> list[str]:
    """What stops these options from working: unreadable files, a key without a cert.

    `external`: a server is named outside the config (`--nats-url`, `NATS_URL`).
    """
    found: list[str] = []
    files = {f"nats.{k}": getattr(nats_cfg, k) for k in FILE_KEYS}
    files.update({f"nats.tls.{k}": getattr(nats_cfg.tls, k) for k in TLS_FILE_KEYS})
    for key, value in files.items():
        if value and not Path(value).expanduser().is_file():
            found.append(f"{key}: no such file {value!r}")
    if bool(nats_cfg.tls.cert_file) != bool(nats_cfg.tls.key_file):
        found.append("nats.tls: cert_file and key_file go together")
    if nats_cfg.creds_file and nats_cfg.nkey_seed_file:
        found.append("nats: set creds_file or nkey_seed_file, not both")
    if not (nats_cfg.url or external) and (
        nats_cfg.creds_file or nats_cfg.nkey_seed_file or nats_cfg.tls.enabled
    ):
        found.append("nats: credentials and TLS apply to an external server; nats.url is empty")
    return found


def tls_context(tls: NatsTls) -> ssl.SSLContext:
    """A client SSL context trusting `ca_file` and presenting `cert_file`, if set."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"nats.tls: {err}") from err
    return context


def connect_options(url: str, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` beyond the url: auth, TLS, event callbacks."""
    events = _Events(url, name)
    options: dict[str, Any] = {
        "error_cb": events.error,
        "disconnected_cb": events.disconnected,
        "reconnected_cb": events.reconnected,
        "closed_cb": events.closed,
    }
    nats_cfg = _profile
    if nats_cfg is None:
        return options
    if nats_cfg.creds_file:
        options["user_credentials"] = str(Path(nats_cfg.creds_file).expanduser())
    if nats_cfg.nkey_seed_file:
        options["nkeys_seed"] = str(Path(nats_cfg.nkey_seed_file).expanduser())
    if nats_cfg.tls.enabled:
        options["tls"] = tls_context(nats_cfg.tls)
    return options


class _Events:
    """Connection events of one client as log events.

    A server that stays away makes the client fail a reconnect every half second: the
    first error after a (re)connect is a warning, repeats of it are debug lines.
    """

    def __init__(self, url: str, name: str) -> None:
        self.fields = {"client": name, "url": url}
        self._last_error = ""

    async def error(self, err: Exception) -> None:
        text = repr(err)
        if text != self._last_error:
            log.warning("bus.connection_error", error=text, **self.fields)
        else:
            log.debug("bus.connection_error", error=text, **self.fields)
        self._last_error = text

    async def disconnected(self) -> None:
        # Also called on a deliberate close: info, not warning (the CLI closes every time).
        log.info("bus.disconnected", **self.fields)

    async def reconnected(self) -> None:
        self._last_error = ""
        log.warning("bus.reconnected", **self.fields)

    async def closed(self) -> None:
        log.info("bus.closed", **self.fields)
