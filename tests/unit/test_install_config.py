"""Secrets from files, `config show`'s redaction and TOML, `[nats]` problems, log lines."""

from __future__ import annotations

import io
import json
import logging
import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from conveyor import config as config_mod
from conveyor import config_nats_auth, config_secrets, config_toml, logs
from conveyor.app.client import discover_url
from conveyor.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_secret_keys_are_read_from_files_named_in_the_config_or_the_environment(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "gitea-token", "gt-123\n")
    _write(tmp_path / "tg", "bot:456\n")
    config = _write(tmp_path / "config.toml", '[gitea]\ntoken_file = "gitea-token"\n')
    env = {"CONVEYOR_TELEGRAM__BOT_TOKEN_FILE": str(tmp_path / "tg")}

    cfg = config_mod.load(config, env=env)

    assert cfg.gitea.token == "gt-123"  # relative to the config file, newline dropped
    assert cfg.telegram.bot_token == "bot:456"


def test_a_secret_given_twice_or_an_unreadable_secret_file_is_a_config_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "key", "k")
    both = _write(tmp_path / "both.toml", '[plane]\napi_key = "x"\napi_key_file = "key"\n')
    with pytest.raises(ConfigError, match=r"plane\.api_key_file: set api_key or api_key_file"):
        config_mod.load(both)
    missing = _write(tmp_path / "missing.toml", '[gitea]\nwebhook_secret_file = "nope"\n')
    with pytest.raises(ConfigError, match=r"gitea\.webhook_secret_file: cannot read"):
        config_mod.load(missing)


def test_a_file_key_that_is_a_field_of_its_own_is_left_to_its_section(tmp_path: Path) -> None:
    _write(tmp_path / "forge-token", "ft-1\n")
    config = _write(tmp_path / "config.toml", '[forge]\ntoken_file = "forge-token"\n')
    cfg = config_mod.load(config)
    assert (cfg.forge.token, cfg.forge.token_file) == ("", "forge-token")


def test_a_file_key_that_names_no_secret_stays_an_unknown_key(tmp_path: Path) -> None:
    config = _write(tmp_path / "config.toml", '[queue]\ntick_s_file = "x"\n')
    with pytest.raises(ConfigError, match=r"queue\.tick_s_file: unknown key"):
        config_mod.load(config)


def test_show_redacts_secrets_url_credentials_and_secret_agent_env() -> None:
    cfg = config_mod.load(
        env={
            "CONVEYOR_GITEA__TOKEN": "gt-123",
            "CONVEYOR_NATS__URL": "tls://ops:pw@nats.example:4222",
            "CONVEYOR_AGENTS__DEVELOPER__ENV__ANTHROPIC_API_KEY": "sk-1",
            "CONVEYOR_AGENTS__DEVELOPER__ENV__HOME": "/home/x",
            "CONVEYOR_AGENTS__DEVELOPER__API_KEY_ENV": "ANTHROPIC_API_KEY",
        }
    )
    shown = config_secrets.redact(msgspec.to_builtins(cfg))
    text = json.dumps(shown)
    for secret in ("gt-123", "sk-1", ":pw@"):
        assert secret not in text
    assert shown["nats"]["url"] == "tls://***@nats.example:4222"
    assert shown["agents"]["developer"]["env"] == {"ANTHROPIC_API_KEY": "***", "HOME": "/home/x"}
    assert shown["agents"]["developer"]["api_key_env"] == "ANTHROPIC_API_KEY"
    assert shown["gitea"]["webhook_secret"] == ""  # an empty secret is shown as empty


def test_the_shown_toml_loads_back_to_the_same_configuration() -> None:
    data = msgspec.to_builtins(config_mod.load())
    data["prices"]["*"] = {"input": 1.0, "output": 2.0, "cached": float("inf")}
    data["reconciler"]["stage_grace_s"] = {"deploy-staging": 1e20}
    data["repos"][0]["check_command"] = ['say "hi"\n', "tab\there", "ünï"]
    assert tomllib.loads(config_toml.dumps(data)) == data


def test_nats_problems_name_each_key() -> None:
    nats = config_mod.NatsConfig(
        url="",
        creds_file="/nonexistent/creds",
        nkey_seed_file="/nonexistent/seed",
        tls=config_nats_auth.NatsTls(cert_file="/nonexistent/cert"),
    )
    found = config_nats_auth.problems(nats)
    assert found == [
        "nats.creds_file: no such file '/nonexistent/creds'",
        "nats.nkey_seed_file: no such file '/nonexistent/seed'",
        "nats.tls.cert_file: no such file '/nonexistent/cert'",
        "nats.tls: cert_file and key_file go together",
        "nats: set creds_file or nkey_seed_file, not both",
        "nats: credentials and TLS apply to an external server; nats.url is empty",
    ]
    assert config_nats_auth.problems(config_mod.NatsConfig()) == []


def test_nats_url_comes_after_the_flag_and_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    (tmp_path / "nats.url").write_text("nats://from-file:4222")
    plain = config_mod.load(env={"CONVEYOR_DATA_DIR": str(tmp_path)})
    configured = config_mod.load(
        env={"CONVEYOR_DATA_DIR": str(tmp_path), "CONVEYOR_NATS__URL": "nats://from-config:1"}
    )
    assert discover_url(plain, "nats://flag:1") == "nats://flag:1"
    assert discover_url(configured) == "nats://from-config:1"
    assert discover_url(plain) == "nats://from-env:4222"
    monkeypatch.delenv("NATS_URL")
    assert discover_url(plain) == "nats://from-file:4222"


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_log_line_has_an_iso_timestamp_the_process_part_and_the_pid(json_lines: bool) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "launcher.launched", None, None)
    record.fields = {"task_id": "DEMO-1"}
    logs._PART = "control+launcher"  # what configure(part=...) sets
    try:
        formatter = logs.JsonFormatter() if json_lines else logs.TextFormatter()
        line = formatter.format(record)
    finally:
        logs._PART = "all"
    if json_lines:
        body = json.loads(line)
        assert re.fullmatch(ISO, body["ts"])
        assert (body["part"], body["pid"], body["task_id"]) == (
            "control+launcher",
            record.process,
            "DEMO-1",
        )
    else:
        assert re.fullmatch(
            rf"{ISO} control\+launcher\[{record.process}\] INFO +launcher.launched task_id=DEMO-1",
            line,
        )


def test_configure_names_the_part_once_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_CONFIGURED", True)  # no stderr handler on the test's root
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("t.part").addHandler(handler)
    saved = logs._PART
    try:
        logs.configure("info", part="gateway")
        logs.get_logger("t.part").warning("gateway.started")
    finally:
        logs._PART = saved
        logging.getLogger("t.part").removeHandler(handler)
    assert json.loads(stream.getvalue())["part"] == "gateway"
