"""`conveyor top`: a live terminal board that redraws in place.

Stages by tasks (the first page of active tasks, as the web board), the queue and
its running jobs, the leases held, and the alerts seen since it started. It reads
the same status subjects as `conveyor status` every `--interval` seconds, and at
once when a stage change or an alert arrives on the bus. Ctrl-C ends it; `--once`
prints one frame (for scripts and pipes).
"""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bus import subjects
from bus.messages import Alert, StageChanged
from conveyor.app.client import Client
from conveyor.app.render import ago
from conveyor.clock import iso
from conveyor.errors import ConveyorError
from conveyor.pipeline import CANCELLED, CREATED, DONE

FIRST_PAGE = {"state": "active", "limit": 200}
TASKS_PER_STAGE = 8
"""Task ids listed per stage row; the rest are counted."""
ALERTS_SHOWN = 8


def read_board(client: Client) -> dict[str, Any]:
    """The overview, the first page of active tasks, the queue and the leases."""
    return {
        "overview": client.request(subjects.STATUS),
        "page": client.request(subjects.STATUS_TASKS, FIRST_PAGE),
        "queue": client.request(subjects.STATUS_QUEUE),
        "leases": client.request(subjects.status_actor("lease_keeper")),
    }


def render_board(data: dict[str, Any], stages: list[str], alerts: list[Alert]) -> RenderableType:
    """One frame: every value from the daemon goes in as plain `Text` (no markup parsed)."""
    overview = data.get("overview") or {}
    health = Text("healthy", "green") if overview.get("healthy") else Text("degraded", "red")
    states = overview.get("by_state") or {}
    head = Text.assemble(
        ("Conveyor ", "bold"),
        health,
        f" — {overview.get('tasks', 0)} tasks, active {states.get('active', 0)}, "
        f"escalated {states.get('escalated', 0)}",
    )
    return Group(
        head,
        _stage_table(data, stages),
        _queue_table(data.get("queue") or {}),
        _lease_table(data.get("leases") or {}),
        _alert_table(alerts),
    )


def _stage_table(data: dict[str, Any], stages: list[str]) -> Table:
    counts = (data.get("overview") or {}).get("by_stage") or {}
    page = data.get("page") or {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for task in page.get("tasks") or []:
        rows.setdefault(task.get("stage", ""), []).append(task)
    names = stages + sorted(set(counts) - set(stages))
    table = Table("stage", "n", "tasks", title="Tasks by stage", title_justify="left", expand=True)
    for stage in names:
        tasks = rows.get(stage, [])
        shown = Text()
        for i, task in enumerate(tasks[:TASKS_PER_STAGE]):
            style = "red" if task.get("escalated") else "cyan"
            shown.append(("  " if i else "") + str(task.get("id", "")), style)
            shown.append(f" {str(task.get('title', ''))[:24]}")
        if len(tasks) > TASKS_PER_STAGE:
            shown.append(f"  +{len(tasks) - TASKS_PER_STAGE} more")
        table.add_row(stage, str(counts.get(stage, len(tasks))), shown)
    return table


def _queue_table(queue: dict[str, Any]) -> RenderableType:
    if queue.get("ok") is False:
        return Text(f"queue: {queue.get('error')}", "red")
    counts = ", ".join(f"{k} {v}" for k, v in sorted((queue.get("counts") or {}).items()))
    table = Table(
        "running job", "role", "attempt", "host", "started",
        title=f"Queue ({counts or 'empty'})",
        title_justify="left",
    )  # fmt: skip
    for job in queue.get("running") or []:
        table.add_row(
            Text(str(job.get("id", ""))),
            str(job.get("role", "")),
            str(job.get("attempt", "")),
            Text(str(job.get("host", ""))),
            ago(job.get("started_at")),
        )
    return table


def _lease_table(keeper: dict[str, Any]) -> RenderableType:
    if keeper.get("ok") is False:
        return Text(f"leases: {keeper.get('error')}", "red")
    table = Table("lease", "task", "revision", "since", title="Leases", title_justify="left")
    for lease in keeper.get("leases") or []:
        table.add_row(
            Text(str(lease.get("name", ""))),
            Text(str(lease.get("task_id", ""))),
            str(lease.get("revision", "")),
            ago(lease.get("acquired_at")),
        )
    return table


def _alert_table(alerts: list[Alert]) -> Table:
    table = Table("at", "level", "task", "alert", title="Alerts", title_justify="left")
    for alert in alerts[:ALERTS_SHOWN]:
        table.add_row(iso(alert.at), alert.level, alert.task_id, Text(alert.text))
    return table


def run_top(client: Client, stages: list[str], *, interval_s: float, once: bool) -> None:
    """Draw until Ctrl-C (or one frame with `once`)."""
    console = Console()
    board = [CREATED, *stages, DONE, CANCELLED]
    if once:
        console.print(render_board(read_board(client), board, []))
        return
    alerts: deque[Alert] = deque(maxlen=ALERTS_SHOWN)
    wake = threading.Event()
    stop = threading.Event()

    def on_message(msg: StageChanged | Alert) -> None:
        if isinstance(msg, Alert):
            alerts.appendleft(msg)
        wake.set()

    client.follow(on_message)
    _on_signal(stop.set, wake.set)
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while not stop.is_set():
            try:
                frame = render_board(read_board(client), board, list(alerts))
            except ConveyorError as err:
                frame = Text(f"Conveyor is not reachable: {err}", "red")
            live.update(frame, refresh=True)
            wake.wait(interval_s)
            wake.clear()


def _on_signal(stop: Callable[[], None], wake: Callable[[], None]) -> None:
    def _handler(_signum: int, _frame: Any) -> None:
        stop()
        wake()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def top_command(make_client: Callable[[click.Context], Client]) -> click.Command:
    """The `top` command; `make_client` is the CLI's way to reach a running Conveyor."""

    @click.command("top")
    @click.option("--interval", default=2.0, show_default=True, help="Seconds between redraws.")
    @click.option("--once", is_flag=True, help="Print one frame and exit.")
    @click.pass_context
    def top(ctx: click.Context, interval: float, once: bool) -> None:
        """A live board of stages and tasks, queue, leases and alerts (Ctrl-C to stop)."""
        client = make_client(ctx)
        cfg = ctx.obj.get("cfg")
        stages = [stage.name for stage in cfg.pipeline.stages] if cfg is not None else []
        try:
            run_top(client, stages, interval_s=max(0.1, interval), once=once)
        except ConveyorError as err:
            raise click.ClickException(f"Conveyor is not reachable: {err}") from err
        finally:
            client.close()

    return top
