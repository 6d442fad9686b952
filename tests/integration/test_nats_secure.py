"""An external NATS with TLS (client certificates verified) and nkey or password users.

The server is a real nats-server; the CA and certificates are made with openssl here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest

from bus.bridge import Bus
from bus.server import EmbeddedNats, free_port
from conveyor import config as config_mod
from conveyor import config_nats_auth
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from conveyor.errors import BusUnavailable
from tests.harness import Processes, wait_ready, wait_until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

PASSWORD = "s3cret-pw"


class SecureNats(EmbeddedNats):
    """The embedded server's config plus a `tls` block and an `authorization` block."""

    def __init__(self, store: Path, extra: str) -> None:
        super().__init__(store)
        self.extra = extra

    def _render_conf(self) -> str:
        return super()._render_conf() + self.extra

    @property
    def tls_url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(pki: Path, name: str, subject: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
             "-out", f"{name}.csr", cwd=pki)  # fmt: skip
    (pki / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=pki)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM."""
    pki = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=conveyor-test-ca", cwd=pki)  # fmt: skip
    _issue(pki, "server", "/CN=127.0.0.1",
           "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    _issue(pki, "client", "/CN=conveyor", "extendedKeyUsage=clientAuth\n")
    return pki


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user nkey seed on disk, as an operator would hand it to Conveyor."""
    path = tmp_path_factory.mktemp("nkey") / "user.nk"
    path.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER) + b"\n")
    return path


@pytest.fixture(scope="module")
def server(
    pki: Path, seed_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureNats]:
    public = nkeys.from_seed(bytearray(seed_file.read_bytes().strip())).public_key.decode()
    extra = (
        "tls {\n"
        f'  cert_file: "{pki / "server.pem"}"\n  key_file: "{pki / "server.key"}"\n'
        f'  ca_file: "{pki / "ca.pem"}"\n  verify: true\n'
        "}\n"
        "authorization {\n"
        f'  users: [ {{nkey: "{public}"}}, {{user: "ops", password: "{PASSWORD}"}} ]\n'
        "}\n"
    )
    nats = SecureNats(tmp_path_factory.mktemp("nats"), extra)
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture(autouse=True)
def no_profile() -> Iterator[None]:
    yield
    config_nats_auth.use(None)


def _tls_toml(pki: Path) -> str:
    return (
        f'[nats.tls]\nca_file = "{pki / "ca.pem"}"\n'
        f'cert_file = "{pki / "client.pem"}"\nkey_file = "{pki / "client.key"}"\n'
    )


def _config(tmp_path: Path, url: str, pki: Path, seed: str = "") -> Path:
    path = tmp_path / "config.toml"
    nkey = f'nkey_seed_file = "{seed}"\n' if seed else ""
    path.write_text(f'data_dir = "data"\n[nats]\nurl = "{url}"\n{nkey}{_tls_toml(pki)}')
    return path


def test_the_configured_nkey_seed_and_client_certificate_reach_a_verifying_server(
    server: SecureNats, pki: Path, seed_file: Path, tmp_path: Path
) -> None:
    cfg = config_mod.load(_config(tmp_path, server.tls_url, pki, str(seed_file)))
    assert config_nats_auth.problems(cfg.nats) == []

    # Without the profile: no client certificate, no user — the server says no
    with pytest.raises(BusUnavailable):
        Bus.connect(server.tls_url, connect_timeout_s=1.0)

    config_nats_auth.use(cfg.nats)
    bus = Bus.connect(server.tls_url, connect_timeout_s=2.0)
    try:
        bus.setup()  # JetStream streams and buckets: a real round trip as that user
    finally:
        bus.close()


def test_a_password_in_the_url_with_tls_files_relative_to_the_config(
    server: SecureNats, pki: Path, tmp_path: Path
) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        shutil.copy(pki / name, tmp_path / name)
    config = tmp_path / "config.toml"
    url = f"tls://ops:{PASSWORD}@127.0.0.1:{server.port}"
    config.write_text(
        f'[nats]\nurl = "{url}"\n[nats.tls]\n'
        'ca_file = "ca.pem"\ncert_file = "client.pem"\nkey_file = "client.key"\n'
    )
    cfg = config_mod.load(config)
    assert cfg.nats.tls.ca_file == str(tmp_path / "ca.pem")
    config_nats_auth.use(cfg.nats)
    Bus.connect(url, connect_timeout_s=2.0).close()

    config_nats_auth.use(config_mod.load(config, env={"CONVEYOR_NATS__TLS__CERT_FILE": '""'}).nats)
    with pytest.raises(BusUnavailable):  # the server verifies client certificates
        Bus.connect(url, connect_timeout_s=1.0)


def test_the_split_set_up_and_the_cli_run_over_tls_with_an_nkey(
    server: SecureNats, pki: Path, seed_file: Path, tmp_path: Path
) -> None:
    procs = Processes(tmp_path, server.tls_url, extra_toml=_tls_toml(pki))
    env = {"CONVEYOR_NATS__NKEY_SEED_FILE": str(seed_file)}
    try:
        procs.start("control", "control", env=env)
        procs.start("launcher", "launcher", env=env)
        cfg = config_mod.load(procs.config, env=env)
        config_nats_auth.use(cfg.nats)
        client = Client(server.tls_url)
        try:
            wait_ready(client, procs)
        finally:
            client.close()
        status = subprocess.run(
            [sys.executable, "-m", "conveyor", "--config", str(procs.config), "status", "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert '"healthy": true' in status.stdout
    finally:
        procs.stop_all()


def test_disconnects_and_reconnects_are_logged_as_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", port=free_port("127.0.0.1"))
    nats.start()
    caplog.set_level(logging.INFO, logger="conveyor.config_nats_auth")
    bus = Bus.connect(nats.url, name="watched")
    try:
        nats.stop()
        wait_until(lambda: "bus.disconnected" in caplog.messages, what="disconnect logged")
        nats.start()
        wait_until(lambda: "bus.reconnected" in caplog.messages, what="reconnect logged")
    finally:
        bus.close()
        nats.stop()
    event = next(r for r in caplog.records if r.getMessage() == "bus.reconnected")
    assert event.fields == {"client": "watched", "url": nats.url}  # type: ignore[attr-defined]


# --- operator mode: a .creds file (user JWT and seed) -----------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[bytes, nkeys.KeyPair, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed, pair, pair.public_key.decode()


def _jwt(signer: nkeys.KeyPair, iss: str, sub: str, nats: dict) -> str:
    """A NATS v2 JWT, as `nsc` would issue it."""
    claims = {"jti": "", "iat": int(SystemClock().now()), "iss": iss, "name": sub[:8], "sub": sub}
    claims["nats"] = {**nats, "version": 2}
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signer.sign(f'{head}.{body}'.encode()))}"


def test_a_credentials_file_reaches_a_server_in_operator_mode(tmp_path: Path) -> None:
    _, operator, op_pub = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account, acc_pub = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, _, sys_pub = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_pub = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = dict.fromkeys(("subs", "data", "payload", "conn", "leaf", "imports", "exports"), -1)
    jetstream = dict.fromkeys(("mem_storage", "disk_storage", "streams", "consumer"), -1)
    acc_jwt = _jwt(
        operator, op_pub, acc_pub, {"type": "account", "limits": {**unlimited, **jetstream}}
    )
    sys_jwt = _jwt(operator, op_pub, sys_pub, {"type": "account"})
    user_jwt = _jwt(
        account, acc_pub, user_pub, {"type": "user", "subs": -1, "data": -1, "payload": -1}
    )
    (tmp_path / "op.jwt").write_text(_jwt(operator, op_pub, op_pub, {"type": "operator"}))
    creds = tmp_path / "conveyor.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    extra = (
        f'operator: "{tmp_path / "op.jwt"}"\nresolver: MEMORY\nsystem_account: {sys_pub}\n'
        f'resolver_preload: {{ {acc_pub}: "{acc_jwt}", {sys_pub}: "{sys_jwt}" }}\n'
    )
    nats = SecureNats(tmp_path / "nats", extra)
    nats.start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(f'[nats]\nurl = "{nats.url}"\ncreds_file = "conveyor.creds"\n')
        with pytest.raises(BusUnavailable):
            Bus.connect(nats.url, connect_timeout_s=1.0)
        config_nats_auth.use(config_mod.load(config).nats)
        bus = Bus.connect(nats.url, connect_timeout_s=2.0)
        try:
            bus.setup()  # JetStream in the account the JWT grants
        finally:
            bus.close()
    finally:
        nats.stop()
