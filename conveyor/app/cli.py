"""The `conveyor` command line: run the daemon, send commands, read status."""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.markup import escape as esc

from bus import subjects
from bus.messages import Alert, StageChanged
from conveyor import __version__, config_nats_auth, logs
from conveyor import config as config_mod
from conveyor.app.cli_config import config_group
from conveyor.app.cli_drain import drain_command
from conveyor.app.cli_status import show_status, show_task
from conveyor.app.cli_top import top_command
from conveyor.app.client import Client, discover_url
from conveyor.app.exit_codes import REFUSED, ConfigProblem, Unreachable
from conveyor.app.nats_node import embedded_server
from conveyor.app.node import Node
from conveyor.app.render import (
    console,
    err_console,
    print_event,
    print_followed,
)
from conveyor.clock import SystemClock
from conveyor.config import Config
from conveyor.errors import BusUnavailable, ConfigError, ConveyorError
from conveyor.layout import Layout

ALERT_AWAITING_APPROVAL = "awaiting_approval"
"""`Alert.kind` of a stage whose work passed and waits for a person's approval."""
ALERT_ESCALATED = "escalated"
"""`Alert.kind` of a task that ran out of retries."""

PARTS = ("nats", "control", "launcher", "gateway", "forge")


def _load(ctx: click.Context) -> Config:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "cfg" not in obj:
        path = obj.get("config_path")
        try:
            cfg = config_mod.load(Path(path) if path else _default_config_path())
        except ConfigError as err:
            raise ConfigProblem(err) from err
        config_nats_auth.use(cfg.nats)
        obj["cfg"] = cfg
    cfg_loaded: Config = obj["cfg"]
    return cfg_loaded


def _default_config_path() -> Path | None:
    path = Path("config.toml")
    return path if path.exists() else None


def _client(ctx: click.Context) -> Client:
    cfg = _load(ctx)
    try:
        url = discover_url(cfg, ctx.obj.get("nats_url"))
        return Client(url, timeout_s=ctx.obj.get("timeout", 10.0))
    except BusUnavailable as err:
        raise Unreachable(err) from err


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="conveyor")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="config.toml to use (default: ./config.toml if present, else embedded).",
)
@click.option("--nats-url", help="NATS server of a running Conveyor (default: discovered).")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for an answer."
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None, nats_url: str | None, timeout: float) -> None:
    """Conveyor: deliver work items through a staged pipeline of AI coding agents."""
    ctx.ensure_object(dict)
    ctx.obj.update(config_path=config_path, nats_url=nats_url, timeout=timeout)


# --- daemon ------------------------------------------------------------------------------


def _configure_logs(cfg: Config, part: str = "all") -> None:
    fmt = cfg.log.format
    logs.configure(cfg.log.level, json_lines=None if fmt == "auto" else fmt == "json", part=part)


def _block_until_signal(on_stop: Callable[[], None]) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        on_stop()


@main.command()
@click.option(
    "--parts",
    default=None,
    help=(
        "Comma-separated parts to run in this process: nats, control, launcher, gateway, "
        "forge [default: all but forge; the gateway only when gateway.enabled]."
    ),
)
@click.pass_context
def up(ctx: click.Context, parts: str | None) -> None:
    """Run Conveyor: all parts in one process, or some of them (Procfile)."""
    cfg = _load(ctx)
    _configure_logs(cfg, "all" if parts is None else "+".join(parts.replace(" ", "").split(",")))
    if parts is None:
        # The forge part serves the local forge to other hosts: only when asked for.
        parts = ",".join(
            p for p in PARTS if (p != "gateway" or cfg.gateway.enabled) and p != "forge"
        )
    _run_parts(ctx, cfg, parts)


@main.command()
@click.pass_context
def gateway(ctx: click.Context) -> None:
    """Run the webhook gateway alone (POST /webhooks/gitea, /webhooks/plane, GET /healthz)."""
    cfg = _load(ctx)
    _configure_logs(cfg, "gateway")
    _run_parts(ctx, cfg, "gateway")


def _run_parts(ctx: click.Context, cfg: Config, parts: str) -> None:
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown part(s) {unknown}; choose from {PARTS}", param_hint="--parts"
        )
    actors = [p for p in chosen if p != "nats"]
    layout = Layout(cfg.data_path)
    if "nats" in chosen and not actors:
        server = embedded_server(cfg)
        layout.root.mkdir(parents=True, exist_ok=True)
        server.start()
        (layout.root / "nats.url").write_text(server.url)
        click.echo(f"nats-server ready at {server.url}", err=True)
        _block_until_signal(server.stop)
        return
    embedded = "nats" in chosen and not ctx.obj.get("nats_url") and not cfg.nats.url
    if not embedded:
        url = _reachable_url(cfg, ctx.obj.get("nats_url"), wait_s=30.0)
        cfg = config_mod.load(
            Path(ctx.obj["config_path"]) if ctx.obj.get("config_path") else _default_config_path(),
            overrides={"nats": {**_nats_table(cfg), "url": url}},
        )
    try:
        node = Node(cfg, parts=actors, embedded=embedded).start()
    except ConveyorError as err:
        raise click.ClickException(f"start-up failed: {err}") from err
    click.echo(f"Conveyor is up ({', '.join(chosen)}); NATS at {node.url}", err=True)
    if node.gateway is not None:
        click.echo(f"Webhook gateway at {node.gateway.url}", err=True)
    _block_until_signal(node.stop)


def _reachable_url(cfg: Config, explicit: str | None, *, wait_s: float) -> str:
    """Wait for a NATS server that answers; the url file is re-read on every try.

    In Procfile mode the nats process may start after us, or a stale url file of an
    earlier run may point at a dead port until the new server rewrites it.
    """
    clock = SystemClock()
    deadline = clock.monotonic() + wait_s
    while True:
        try:
            url = discover_url(cfg, explicit)
            Client(url, timeout_s=2.0).close()
        except BusUnavailable as err:
            if clock.monotonic() >= deadline:
                raise Unreachable(f"no NATS server answered: {err}") from err
            clock.sleep(0.5)
        else:
            return url


def _nats_table(cfg: Config) -> dict[str, Any]:
    # Every [nats] key (replicas, retries, ...) but `servers`: the url given with this
    # table carries them, joined, and must win over the file.
    table: dict[str, Any] = msgspec.to_builtins(cfg.nats)
    table.pop("servers", None)
    return table


@main.command()
@click.argument("title", default="Add a greeting feature")
@click.option("--repo", default=None, help="Repository (default: the first configured).")
@click.option("--description", default="", help="Work item description.")
@click.option(
    "--approve/--no-approve",
    default=True,
    show_default=True,
    help="Approve the analysis with `conveyor approve` when it is ready.",
)
@click.option(
    "--deadline",
    type=float,
    default=600.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.pass_context
def run(
    ctx: click.Context,
    title: str,
    repo: str | None,
    description: str,
    approve: bool,
    deadline: float,
) -> None:
    """Start Conveyor, submit one work item, follow it to `done`, stop."""
    cfg = _load(ctx)
    if not cfg.repos:
        raise click.ClickException("no repositories configured")
    repo_name = repo or cfg.repos[0].name
    _configure_logs(cfg) if cfg.log.level == "debug" else logs.configure("warning")
    node = Node(cfg).start()
    code = 1
    try:
        code = _follow_run(node, cfg, repo_name, title, description, approve, deadline)
    finally:
        node.stop()
    sys.exit(code)


def _follow_run(
    node: Node, cfg: Config, repo: str, title: str, description: str, approve: bool, deadline: float
) -> int:
    client = Client(node.url)
    # Messages arrive on the client's loop thread; handle them here, where blocking is fine.
    inbox: queue.Queue[StageChanged | Alert] = queue.Queue()
    state: dict[str, Any] = {"id": None, "end": None}
    clock = SystemClock()
    started = clock.monotonic()
    try:
        client.follow(inbox.put)
        reply = client.command("submit", {"repo": repo, "title": title, "description": description})
        if not reply.get("ok"):
            err_console.print(f"submit refused: {esc(str(reply.get('error')))}")
            return REFUSED
        state["id"] = reply["task"]["id"]
        console.print(f"submitted [bold]{state['id']}[/] to {repo}: {esc(title)}")
        while state["end"] is None:
            remaining = deadline - (clock.monotonic() - started)
            if remaining <= 0:
                err_console.print(f"{state['id']} did not finish within {deadline:g}s")
                return 1
            try:
                msg = inbox.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if msg.task_id == state["id"]:
                state["end"] = _show(client, msg, clock.monotonic() - started, approve)
        task = client.request(subjects.status_task(state["id"]))
    finally:
        client.close()
    layout = Layout(cfg.data_path)
    bare = layout.forge / "repos" / f"{repo}.git"
    if state["end"] != "done":
        err_console.print(
            f"{state['id']} ended {state['end']}: {esc(str(task.get('last_reason')))}"
        )
        return 1
    console.print(f"\n[green]{state['id']} is done[/] in {clock.monotonic() - started:.1f}s.")
    console.print(f"  merged into main of   {bare}")
    console.print(
        f"  artifacts             {layout.worktree(repo, state['id'])}/docs/"
        f"work-items/{state['id']}/"
    )
    console.print(f"  agent logs            {layout.runs / state['id']}/")
    console.print(f"  inspect the repo:     git --git-dir {bare} log --oneline main")
    return 0


def _show(client: Client, msg: StageChanged | Alert, elapsed: float, approve: bool) -> str | None:
    """Print one event of the followed task; return how it ended, if it did."""
    print_followed(msg, elapsed)
    if isinstance(msg, StageChanged):
        return msg.new if msg.new in ("done", "cancelled") else None
    if msg.kind == ALERT_AWAITING_APPROVAL and approve:
        reply = client.command("approve", {"id": msg.task_id})
        outcome = "ok" if reply.get("ok") else reply.get("error")
        console.print(
            f"[dim]{elapsed:6.1f}s[/] $ conveyor approve {msg.task_id} → {esc(str(outcome))}"
        )
    return "escalated" if msg.kind == ALERT_ESCALATED else None


# --- commands ----------------------------------------------------------------------------


def _ask(ctx: click.Context, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request to a running Conveyor; an unreachable one is a clear CLI error."""
    client = _client(ctx)
    try:
        reply = client.request(subject, body)
    except ConveyorError as err:
        raise Unreachable(err) from err
    finally:
        client.close()
    if not isinstance(reply, dict):
        raise click.ClickException(f"unexpected reply on {subject}: {reply!r}")
    return reply


def _send(ctx: click.Context, name: str, body: dict[str, Any], as_json: bool) -> None:
    reply = _ask(ctx, subjects.COMMANDS[name], body)
    if as_json:
        _print_json(reply)
    elif reply.get("ok"):
        task = reply.get("task") or {}
        note = f" ({reply['note']})" if reply.get("note") else ""
        click.echo(f"ok: {task.get('id', '')} {task.get('stage', '')}{note}".rstrip())
    if not reply.get("ok"):
        if not as_json:
            click.echo(f"refused: {reply.get('error')}", err=True)
        sys.exit(REFUSED)


_json_flag = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON reply.")


@main.command()
@click.argument("title")
@click.option("--repo", default=None, help="Repository (default: the first configured).")
@click.option("--id", "item_id", default="", help="Work item id (default: next PREFIX-N).")
@click.option("--description", default="", help="Work item description.")
@_json_flag
@click.pass_context
def submit(
    ctx: click.Context, title: str, repo: str | None, item_id: str, description: str, as_json: bool
) -> None:
    """Submit a work item; it starts at `created`."""
    cfg = _load(ctx)
    repo_name = repo or (cfg.repos[0].name if cfg.repos else "")
    _send(
        ctx,
        "submit",
        {"repo": repo_name, "title": title, "id": item_id, "description": description},
        as_json,
    )


def _simple(name: str, help_text: str, with_reason: bool = False) -> None:
    @click.argument("item_id", metavar="ID")
    @_json_flag
    @click.pass_context
    def command(ctx: click.Context, item_id: str, as_json: bool, reason: str = "") -> None:
        body: dict[str, Any] = {"id": item_id}
        if with_reason:
            body["reason"] = reason
        _send(ctx, name, body, as_json)

    command.__doc__ = help_text
    if with_reason:
        command = click.option("--reason", default="", help="Why (kept in history).")(command)
    main.command(name=name)(command)


_simple("approve", "Approve a task's analysis (the human gate).")
_simple("reject", "Reject a task's analysis; the analyst reworks it.", with_reason=True)
_simple("cancel", "Cancel a task; its running agent is killed.", with_reason=True)
_simple("retry", "Reset an escalated task's retry budget and re-run its stage.")
_simple("confirm-deploy", "Confirm the production deploy of a protected repository.")


@main.command("release-lease")
@click.argument("name")
@click.option("--task", "task_id", default="", help="Release only if this task holds it.")
@click.option("--force", is_flag=True, help="Release whoever holds it (a stuck holder).")
@_json_flag
@click.pass_context
def release_lease(ctx: click.Context, name: str, task_id: str, force: bool, as_json: bool) -> None:
    """Release a merge lease (e.g. merge.demo); without --force only its holder task may."""
    if not force and not task_id:
        raise click.UsageError("give --task ID (holder-aware) or --force")
    reply = _ask(ctx, subjects.LEASE_RELEASE, {"name": name, "task_id": task_id, "force": force})
    if as_json:
        _print_json(reply)
    else:
        click.echo(f"{'released' if reply.get('granted') else 'refused'}: {reply.get('reason')}")
    if not reply.get("granted"):
        sys.exit(REFUSED)


# --- read commands -----------------------------------------------------------------------


@main.command()
@click.argument("item_id", metavar="[ID]", required=False)
@click.option("--all", "every", is_flag=True, help="Page through every task, finished too.")
@click.option("--stage", default="", help="Only tasks in this stage.")
@click.option("--repo", default="", help="Only tasks of this repository.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one document per page.")
@click.pass_context
def status(
    ctx: click.Context, item_id: str | None, every: bool, stage: str, repo: str, as_json: bool
) -> None:
    """Show the daemon's status and active tasks (--all: every task), or one task."""
    client = _client(ctx)
    try:
        if item_id:
            show_task(client, item_id, as_json=as_json)
            return
        query = {"state": "all" if every else "active", "stage": stage, "repo": repo}
        show_status(client, query, as_json=as_json)
    except ConveyorError as err:
        raise Unreachable(err) from err
    finally:
        client.close()


@main.command()
@click.option("--history", is_flag=True, help="Replay stored stage changes and alerts first.")
@_json_flag
@click.pass_context
def tail(ctx: click.Context, history: bool, as_json: bool) -> None:
    """Follow stage changes and alerts as they happen (Ctrl-C to stop)."""
    client = _client(ctx)

    def on_message(msg: StageChanged | Alert) -> None:
        if as_json:
            click.echo(json.dumps({"subject": _subject_of(msg), **json.loads(_encode(msg))}))
        else:
            print_event(msg)

    try:
        client.follow(on_message, history=history)
    except ConveyorError as err:
        client.close()
        raise Unreachable(err) from err
    _block_until_signal(client.close)


def _subject_of(msg: StageChanged | Alert) -> str:
    return subjects.stage_changed(msg.task_id) if isinstance(msg, StageChanged) else subjects.ALERTS


def _encode(msg: StageChanged | Alert) -> bytes:
    from bus.messages import encode

    return encode(msg)


main.add_command(config_group)
main.add_command(top_command(_client))
main.add_command(drain_command(_client))


if __name__ == "__main__":
    main()
