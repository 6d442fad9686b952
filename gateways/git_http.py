"""Git's smart HTTP protocol for the local forge: `git http-backend` as CGI, streamed.

One aiohttp handler turns a request for `/git/<repo>.git/...` into a run of
`git http-backend` (the CGI program git ships): the request body is fed to its
stdin while its stdout is streamed back, so neither a clone nor a push is ever
held whole in memory. Only the smart protocol's three paths are served (ref
advertisement, upload-pack, receive-pack); the dumb protocol's file paths are 404.

Authentication (`authorized`): a bearer token, or HTTP basic auth whose password
(or, with an empty password, user name) is the token, as git sends it from a
`http://user:token@host/...` URL after a 401 with `WWW-Authenticate: Basic`.
The token is compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import os
import re
import signal
from pathlib import Path

from aiohttp import web

from conveyor import validate
from conveyor.errors import InvalidField
from conveyor.logs import get_logger
from gateways import git

log = get_logger(__name__)

REALM = 'Basic realm="conveyor forge", charset="UTF-8"'
"""The challenge of a 401: git answers it with the credentials of the remote's URL."""

IDLE_TIMEOUT_S = 120.0
"""A transfer that moves no byte for this long is cut (its git process killed)."""

CHUNK_BYTES = 64 * 1024
MAX_STDERR_BYTES = 8 * 1024

_SERVICES = {
    ("GET", "info/refs"),
    ("POST", "git-upload-pack"),
    ("POST", "git-receive-pack"),
}
_PATH_RE = re.compile(
    r"^(?P<repo>[^/]+)\.git/(?P<rest>info/refs|git-upload-pack|git-receive-pack)$"
)
_FILLER_PASSWORD = "x-oauth-basic"  # noqa: S105 - a fixed filler, not a secret
_PASSED_HEADERS = (
    ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
    ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
)


def authorized(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` (an empty token admits nobody)."""
    if not header or not token:
        return False
    scheme, _, value = header.strip().partition(" ")
    given = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(given, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # Gitea's convention too: the token as the user name, the password empty or a filler.
        given = password if password not in ("", _FILLER_PASSWORD) else user
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def refused(request: web.Request) -> web.Response:
    """The 401 every unauthenticated request gets; logged without any credential."""
    # git asks without credentials first and sends them on the challenge: that 401 is news
    # only when credentials came with the request and were wrong.
    wrong = "Authorization" in request.headers
    (log.warning if wrong else log.debug)(
        "forge_http.refused",
        method=request.method,
        path=request.path,
        remote=request.remote or "",
        wrong_credentials=wrong,
    )
    return web.json_response(
        {"error": "unauthorized", "message": "a valid forge token is required"},
        status=401,
        headers={"WWW-Authenticate": REALM},
    )


def repo_of(path: str) -> tuple[str, str]:
    """(`repo`, service path) of `<repo>.git/<service>`; `InvalidField` for anything else."""
    match = _PATH_RE.fullmatch(path)
    if match is None:
        raise InvalidField("path", "not a smart HTTP path of a repository")
    return validate.repo_name(match["repo"]), match["rest"]


async def serve(request: web.Request, project_root: Path, path: str) -> web.StreamResponse:
    """Answer one smart HTTP request for `path` (`<repo>.git/...`) under `project_root`."""
    try:
        repo, rest = repo_of(path)
    except InvalidField:
        raise web.HTTPNotFound() from None
    if (request.method, rest) not in _SERVICES:
        raise web.HTTPNotFound()
    if not (project_root / f"{repo}.git").is_dir():
        raise web.HTTPNotFound()
    proc = await asyncio.create_subprocess_exec(
        git.git_executable(),
        # Hooks of the bare repository are never run, whatever a push brings.
        "-c",
        "core.hooksPath=/dev/null",
        "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_cgi_env(request, project_root, f"/{repo}.git/{rest}"),
    )
    feeding = asyncio.ensure_future(_feed(request, proc))
    errors = asyncio.ensure_future(_drain_stderr(proc))
    try:
        return await _respond(request, proc, repo, rest)
    except BaseException:
        # The client went away or the backend stalled: nothing may outlive the request.
        _kill(proc)
        raise
    finally:
        feeding.cancel()
        try:
            code = await asyncio.wait_for(proc.wait(), IDLE_TIMEOUT_S)
        except TimeoutError:
            _kill(proc)
            code = await proc.wait()
        stderr = await errors
        if code != 0:
            log.warning(
                "forge_http.backend_failed",
                repo=repo,
                service=rest,
                exit_code=code,
                stderr=stderr.decode("utf-8", "replace")[-500:],
            )


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the backend while it runs.

    Not `Process.kill`: `Popen.send_signal` polls first, which reaps a child that just
    exited before asyncio's child watcher can, and the watcher then reports 255.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


def _cgi_env(request: web.Request, project_root: Path, path_info: str) -> dict[str, str]:
    env = git.child_env()
    env.update(
        {
            "GIT_PROJECT_ROOT": str(project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": path_info,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            # Set only for authenticated requests: http-backend enables receive-pack then.
            "REMOTE_USER": "conveyor",
            "REMOTE_ADDR": request.remote or "",
        }
    )
    # Without a length (a chunked push), http-backend reads the body to its end.
    if request.content_length is not None:
        env["CONTENT_LENGTH"] = str(request.content_length)
    for header, name in _PASSED_HEADERS:
        value = request.headers.get(header)
        if value:
            env[name] = value
    return env


async def _feed(request: web.Request, proc: asyncio.subprocess.Process) -> None:
    """Copy the request body to the backend's stdin, then close it."""
    stdin = proc.stdin
    if stdin is None:
        return
    try:
        while chunk := await request.content.read(CHUNK_BYTES):
            stdin.write(chunk)
            await stdin.drain()
    except Exception as err:  # noqa: BLE001 - a client gone mid-upload; the backend sees EOF
        log.info("forge_http.upload_ended", error=type(err).__name__)
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()


async def _drain_stderr(proc: asyncio.subprocess.Process) -> bytes:
    kept = b""
    if proc.stderr is None:
        return kept
    while chunk := await proc.stderr.read(CHUNK_BYTES):
        kept = (kept + chunk)[-MAX_STDERR_BYTES:]
    return kept


async def _respond(
    request: web.Request, proc: asyncio.subprocess.Process, repo: str, rest: str
) -> web.StreamResponse:
    stdout = proc.stdout
    if stdout is None:
        raise web.HTTPInternalServerError()
    try:
        head = await asyncio.wait_for(stdout.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        log.warning("forge_http.backend_no_headers", repo=repo, service=rest)
        raise web.HTTPBadGateway() from None
    status, headers = _cgi_headers(head)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    while True:
        chunk = await asyncio.wait_for(stdout.read(CHUNK_BYTES), IDLE_TIMEOUT_S)
        if not chunk:
            break
        await response.write(chunk)
    await response.write_eof()
    if rest == "git-receive-pack":
        log.info("forge_http.pushed", repo=repo)
    return response


def _cgi_headers(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers of a CGI answer's header block."""
    status = 200
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            status = int(code) if code.isdigit() else 502
        else:
            headers[name] = value
    return status, headers
