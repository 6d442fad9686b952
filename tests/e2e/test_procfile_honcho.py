"""The repository's real Procfile under honcho delivers a work item to done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.app.client import Client
from tests.harness import CONFIG, drive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_procfile_under_honcho_delivers_an_item(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "config.toml").write_text(CONFIG.format(data=data, url=""))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "NATS_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "honcho.log").open("wb")
    honcho = subprocess.Popen(
        [str(bin_dir / "honcho"), "-f", str(ROOT / "Procfile"), "-d", str(tmp_path), "start"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client: Client | None = None
    try:
        url_file = data / "nats.url"
        wait_until(url_file.exists, what="the nats process wrote nats.url", deadline_s=60)
        client = Client(url_file.read_text().strip())
        reply = wait_until(lambda: _submit(client), what="control answered a submit", deadline_s=60)
        assert reply["ok"], reply
        task = drive(client, reply["task"]["id"], "done")
        assert task["stage"] == "done"
    except AssertionError:
        raise AssertionError((tmp_path / "honcho.log").read_text()[-4000:]) from None
    finally:
        if client is not None:
            client.close()
        os.killpg(honcho.pid, signal.SIGTERM)  # honcho stops every process of the Procfile
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
    output = (tmp_path / "honcho.log").read_text()
    for part in ("nats", "control", "launcher", "gateway"):
        assert f"{part}.1 " in output, part


def _submit(client: Client) -> dict | None:
    try:
        reply = client.command("submit", {"repo": "demo", "title": "Through the Procfile"})
    except Exception:
        return None
    return reply
