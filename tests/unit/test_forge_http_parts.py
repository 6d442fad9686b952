"""The pure parts of the forge over HTTP: credentials, paths, CGI headers, config, choice."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from conveyor import config as config_mod
from conveyor.app.clients import make_forge
from conveyor.clock import FakeClock
from conveyor.errors import ConfigError, InvalidField
from gateways.git_http import _cgi_headers, authorized, repo_of
from gateways.local_forge import LocalForge
from gateways.local_forge_client import ForgeClient
from gateways.local_forge_server import ForgeServer

TOKEN = "t0k/en:x@y"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}",
        f"bearer   {TOKEN}  ",
        _basic("conveyor", TOKEN),
    ],
)
def test_the_token_is_accepted_as_bearer_or_basic_credentials(header: str) -> None:
    assert authorized(header, TOKEN)


@pytest.mark.parametrize("password", ["", "x-oauth-basic"])
def test_a_token_without_a_colon_may_come_as_the_user_name_as_with_gitea(password: str) -> None:
    assert authorized(_basic("plain-token", password), "plain-token")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        _basic("conveyor", "wrong"),
        _basic("conveyor", ""),
        "Basic not-base64!",
        f"Token {TOKEN}",
    ],
)
def test_anything_else_is_refused(header: str | None) -> None:
    assert not authorized(header, TOKEN)


def test_an_empty_token_admits_nobody() -> None:
    assert not authorized("Bearer ", "")
    assert not authorized(_basic("", ""), "")


def test_only_the_smart_protocols_paths_of_a_valid_repository_are_served() -> None:
    assert repo_of("demo.git/info/refs") == ("demo", "info/refs")
    assert repo_of("demo.git/git-receive-pack") == ("demo", "git-receive-pack")
    for path in (
        "demo.git/HEAD",
        "demo.git/objects/info/packs",
        "../demo.git/info/refs",
        "demo/info/refs",
        "Demo Repo.git/info/refs",
        "demo.git/info/refs/../../config",
    ):
        with pytest.raises(InvalidField):
            repo_of(path)


def test_a_cgi_answer_head_gives_status_and_headers() -> None:
    head = b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\nExpires: never\r\n\r\n"
    assert _cgi_headers(head) == (403, {"Content-Type": "text/plain", "Expires": "never"})
    assert _cgi_headers(b"Content-Type: application/x-git\r\n\r\n")[0] == 200


def _cfg(tmp_path: Path, **forge: object) -> config_mod.Config:
    return config_mod.load(env={}, overrides={"data_dir": str(tmp_path), "forge": forge})


@pytest.mark.parametrize(
    ("url", "problem"),
    [("ftp://host", "http"), ("http://", "http"), ("http://u:p@host:1", "credentials")],
)
def test_a_forge_url_must_be_plain_http(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"forge.*{problem}"):
        _cfg(tmp_path, url=url)


def test_the_token_file_wins_and_must_hold_a_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    assert _cfg(tmp_path, token="inline", token_file=str(token_file)).forge.secret() == "from-file"
    assert _cfg(tmp_path, token="inline").forge.secret() == "inline"
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        _cfg(tmp_path, token_file=str(token_file)).forge.secret()
    with pytest.raises(ConfigError, match="cannot read"):
        _cfg(tmp_path, token_file=str(tmp_path / "missing")).forge.secret()


def test_a_process_with_a_forge_url_uses_it_unless_it_owns_the_forge(tmp_path: Path) -> None:
    # Given no url (one host), a url, and a url in the process that runs the forge part
    plain = make_forge(_cfg(tmp_path), FakeClock())
    remote = make_forge(_cfg(tmp_path, url="http://forge:8470/", token=TOKEN), FakeClock())
    owner = make_forge(
        _cfg(tmp_path, url="http://forge:8470", token=TOKEN), FakeClock(), owner=True
    )

    # Then the first and the owner use the bare repositories, the other the URL
    assert isinstance(plain, LocalForge)
    assert isinstance(owner, LocalForge)
    assert isinstance(remote, ForgeClient)
    assert remote.clone_url("demo") == "http://conveyor:t0k%2Fen%3Ax%40y@forge:8470/git/demo.git"
    remote.close()
    anonymous = ForgeClient("http://forge:8470", "")
    assert anonymous.clone_url("demo") == "http://forge:8470/git/demo.git"
    anonymous.close()


def test_the_forge_is_never_served_without_a_token(tmp_path: Path) -> None:
    forge = LocalForge(tmp_path / "forge", {})
    with pytest.raises(ConfigError, match=r"forge\.token"):
        ForgeServer(forge, "", host="127.0.0.1", port=0)
