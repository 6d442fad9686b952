"""The wire of the local forge's HTTP API, shared by its server and its client.

Every operation of the `Forge` interface but `clone_url` is one `POST
/api/forge/<op>` whose JSON body is a `ForgeCall`; the answer is `{"result": …}`
(200), or `{"error": kind, "message": …}` with 400 (invalid input), 409 (the
forge refused: `ERRORS` names the kinds) or 500. Every operation may be sent
again: reads are reads, and each write is idempotent at the forge (an open
pull request is found again, a merged one stays merged, a status is set to the
same value, a running check is joined).
"""

from __future__ import annotations

import msgspec

from conveyor.errors import ForgeError, HeadMismatch, MergeConflict
from gateways.forge import CommitStatus

API_PREFIX = "/api/forge/"
GIT_PREFIX = "/git/"

CHECK_WAIT_S = 20.0
"""How long one `checks` call waits on the server for a running check to end."""

OPS = (
    "branch_head",
    "delete_branch",
    "read_file",
    "list_dir",
    "find_pull",
    "open_pull",
    "get_pull",
    "merge_pull",
    "commit_status",
    "set_status",
    "check_log",
    "checks",
)

ERRORS: dict[str, type[ForgeError]] = {
    "forge": ForgeError,
    "head_mismatch": HeadMismatch,
    "merge_conflict": MergeConflict,
}
"""The kinds of a 409 answer and the error each is raised as by the client."""


class ForgeCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The arguments of one call; each operation reads the fields it takes."""

    repo: str
    branch: str = ""
    ref: str = ""
    path: str = ""
    number: int = 0
    title: str = ""
    body: str = ""
    expected_head_sha: str = ""
    sha: str = ""
    state: str = ""
    context: str = ""
    description: str = ""
    start: bool = False
    """`checks`: run the check unless one runs for this sha (else only wait for it)."""
    wait_s: float = CHECK_WAIT_S
    """`checks`: how long to wait for a running check (at most `CHECK_WAIT_S`)."""


class Checks(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of `checks`: the combined status now, and whether a check still runs."""

    status: CommitStatus | None
    running: bool


def error_kind(err: ForgeError) -> str:
    """The wire kind of a forge refusal (the most specific class that matches)."""
    for kind, cls in ERRORS.items():
        if type(err) is cls:
            return kind
    return "forge"
