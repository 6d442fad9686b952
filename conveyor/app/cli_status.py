"""`conveyor status`: the overview with active tasks, or every page, or one task.

With `--json` the output is JSON Lines: one document per line, written as each
page arrives. The first line carries `overview` and `usage` with the first page
(`tasks`, `next`, `total`); every further line is the next page as
`conveyor.status.tasks` answered it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from bus import subjects
from conveyor.app.client import Client, PageRefused
from conveyor.app.render import print_overview, print_task
from conveyor.errors import ConveyorError


def show_task(client: Client, item_id: str, *, as_json: bool) -> None:
    """One task with its history; exits 1 when there is no such task."""
    try:
        subject = subjects.status_task(item_id)
    except ConveyorError as err:
        raise click.BadParameter(str(err), param_hint="ID") from err
    record = client.request(subject)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
    else:
        print_task(record)
    if record.get("ok") is False:
        sys.exit(1)


def show_status(client: Client, query: dict[str, Any], *, as_json: bool) -> None:
    """The overview and every page of tasks matching `query` (state, stage, repo)."""
    overview = client.request(subjects.STATUS)
    usage = client.request(subjects.STATUS_USAGE)
    rows: list[dict[str, Any]] = []
    total = 0
    try:
        for number, page in enumerate(client.pages(**query)):
            if as_json:
                head = {"overview": overview, "usage": usage} if number == 0 else {}
                click.echo(json.dumps({**head, **page}, sort_keys=True))
            else:
                rows.extend(page["tasks"])
                total = int(page.get("total", 0))
    except PageRefused as err:
        raise click.ClickException(str(err)) from err
    if not as_json:
        print_overview(overview, rows, usage, shown=_shown(query, len(rows), total))


def _shown(query: dict[str, Any], count: int, total: int) -> str:
    """What the task table lists, e.g. "12 of 12 active tasks (repo demo)"."""
    where = ", ".join(f"{k} {v}" for k, v in query.items() if k in ("stage", "repo") and v)
    state = "" if query["state"] == "all" else f"{query['state']} "
    return f"{count} of {total} {state}tasks" + (f" ({where})" if where else "")
