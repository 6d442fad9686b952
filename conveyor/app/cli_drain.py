"""`conveyor drain NAME`: a launcher takes no new order; `--resume` takes them again.

A drained launcher's runs go on and report as usual, and the other launchers take
the orders it leaves: once it answered "draining", its busy count only falls.
`--wait` waits for it to reach 0. The drain lasts as long as the launcher process:
a launcher started again takes orders.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from bus import subjects
from conveyor.app.client import Client
from conveyor.app.exit_codes import REFUSED, Unreachable
from conveyor.clock import SystemClock
from conveyor.errors import BusUnavailable, ConveyorError

POLL_S = 0.5
CLOCK = SystemClock()


def drain_command(make_client: Callable[[click.Context], Client]) -> click.Command:
    """The `drain` command; `make_client` is the CLI's way to reach a running Conveyor."""

    @click.command("drain")
    @click.argument("name")
    @click.option("--resume", is_flag=True, help="Take new orders again.")
    @click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(min=0),
        default=0.0,
        help="Wait up to this many seconds for its runs to finish (exit 1 if they do not).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the raw JSON reply.")
    @click.pass_context
    def drain(ctx: click.Context, name: str, resume: bool, wait_s: float, as_json: bool) -> None:
        """Stop launcher NAME (its `launcher.name`) taking new orders; its runs finish."""
        subject = subjects.launcher_drain(name)
        body = {"drain": not resume}
        client = make_client(ctx)
        try:
            reply = _ask(client, subject, body, name)
            since = CLOCK.monotonic()
            while not resume and reply.get("ok") and reply.get("busy") != 0:
                if CLOCK.monotonic() - since >= wait_s:
                    break
                CLOCK.sleep(POLL_S)
                reply = _ask(client, subject, body, name)
        finally:
            client.close()
        if as_json:
            click.echo(json.dumps(reply, sort_keys=True))
        elif not reply.get("ok"):
            click.echo(f"refused: {reply.get('error')}", err=True)
        else:
            state = "draining" if reply.get("draining") else "taking orders"
            click.echo(f"{reply.get('launcher')}: {state}, {reply.get('busy', 0)} run(s) busy")
        if not reply.get("ok") or (wait_s and not resume and reply.get("busy") != 0):
            sys.exit(REFUSED)

    return drain


def _ask(client: Client, subject: str, body: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        reply = client.request(subject, body)
    except BusUnavailable as err:
        raise Unreachable(f"no launcher named {name!r} answered on {subject} ({err})") from err
    except ConveyorError as err:
        raise Unreachable(err) from err
    if not isinstance(reply, dict):
        raise click.ClickException(f"unexpected reply on {subject}: {reply!r}")
    return reply
