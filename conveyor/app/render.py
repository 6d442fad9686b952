"""How the CLI shows things: status tables, one task with its history, followed events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from bus.messages import Alert, StageChanged
from conveyor.clock import SystemClock, iso

console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def ago(ts: float | None) -> str:
    """How long ago `ts` was, for people ("-" when never)."""
    if not ts:
        return "-"
    seconds = max(0.0, SystemClock().now() - ts)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def spent(usage: dict[str, Any]) -> str:
    """USD and tokens for people: "$0.0123 / 2,345"."""
    tokens = usage.get("tokens")
    if tokens is None:
        tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
    return f"${float(usage.get('cost_usd', 0.0)):.4f} / {int(tokens):,}"


def print_overview(
    overview: dict[str, Any],
    tasks: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    *,
    shown: str = "",
) -> None:
    """The daemon's health, its actors, its tasks (`shown` says which) and the cost ledger."""
    health = "[green]healthy[/]" if overview.get("healthy") else "[red]degraded[/]"
    console.print(
        f"Conveyor {overview.get('version', '?')} — {health} — "
        f"{overview.get('tasks', 0)} tasks, jobs {overview.get('jobs', {})}"
    )
    _print_counts(overview)
    _print_control(overview.get("control"))
    actors = Table("actor", "health", "details", title="Actors", title_justify="left")
    for name, info in sorted(overview.get("actors", {}).items()):
        ok = info.get("healthy")
        detail = info.get("error") or ", ".join(
            f"{k}={v}"
            for k, v in info.items()
            if k in ("tasks", "escalated", "counts", "busy", "slots", "name")
            or (k == "draining" and v)
        )
        actors.add_row(name, "[green]ok[/]" if ok else "[red]down[/]", esc(str(detail)))
    console.print(actors)
    table = Table(
        "id",
        "repo",
        "stage",
        "step",
        "job",
        "retries",
        "cost / tokens",
        "updated",
        "title",
        title=f"Tasks: {shown}" if shown else "Tasks",
        title_justify="left",
    )
    for task in tasks:
        stage = task["stage"] + (" [red](escalated)[/]" if task.get("escalated") else "")
        table.add_row(
            task["id"],
            task["repo"],
            stage,
            task.get("step", ""),
            task.get("job_status", ""),
            str(task.get("developer_retries", 0)),
            spent(task),
            ago(task.get("updated_at")),
            esc(task["title"]),
        )
    console.print(table)
    held = overview.get("actors", {}).get("queue_worker", {}).get("held") or {}
    for repo, why in sorted(held.items()):
        console.print(f"[red]held[/] {repo}: {esc(str(why))}")
    if usage and usage.get("ok") is not False:
        _print_usage(usage)


def _print_counts(overview: dict[str, Any]) -> None:
    """Tasks by state, by stage and per repository, as the overview counts them."""
    states = overview.get("by_state") or {}
    if states:
        console.print(", ".join(f"{state} {count}" for state, count in states.items()))
    stages = overview.get("by_stage") or {}
    if stages:
        console.print("by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(stages.items())))
    for repo, counts in sorted((overview.get("by_repo") or {}).items()):
        console.print(f"{repo}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _print_usage(usage: dict[str, Any]) -> None:
    """Spending per repository (overall and today) and per delivered item."""
    today = usage.get("today", {}).get("by_repo", {})
    table = Table(
        "repo",
        "cost / tokens",
        f"today ({usage.get('day', '')})",
        title="Cost ledger",
        title_justify="left",
    )
    for repo, total in sorted(usage.get("by_repo", {}).items()):
        table.add_row(repo, spent(total), spent(today.get(repo, {})))
    console.print(table)
    delivered = usage.get("delivered", {})
    if delivered.get("count"):
        console.print(
            f"delivered {delivered['count']}: ${delivered['cost_per_item_usd']:.4f} and "
            f"{delivered['tokens_per_item']:,} tokens per item"
        )


def print_task(record: dict[str, Any]) -> None:
    """One task with its history, or the refusal the service answered."""
    if record.get("ok") is False:
        err_console.print(f"[red]{esc(str(record.get('error')))}[/]")
        return
    flags = " [red]escalated[/]" if record.get("escalated") else ""
    console.print(
        f"[bold]{record['id']}[/] {esc(record['title'])}  ({record['repo']}, {record['branch']})"
    )
    console.print(
        f"stage [cyan]{record['stage']}[/] step {record.get('step')} job "
        f"{record.get('job_id') or '-'} \\[{record.get('job_status') or '-'}]{flags}"
    )
    if record.get("last_reason"):
        console.print(f"last: {esc(record['last_reason'])}")
    if record.get("job_reason"):
        console.print(f"job failed: [red]{esc(record['job_reason'])}[/]")
    console.print(f"spent {spent(record)} tokens")
    table = Table(
        "at", "from", "to", "cost / tokens", "cause", title="History", title_justify="left"
    )
    for entry in record.get("history", []):
        table.add_row(
            iso(entry["at"]), entry["old"] or "-", entry["new"], spent(entry), esc(entry["cause"])
        )
    console.print(table)
    _print_briefs(record.get("briefs") or [])


def _print_briefs(briefs: list[dict[str, Any]]) -> None:
    """The rework briefs sent to agents, newest last, each cut to its first lines."""
    if not briefs:
        return
    table = Table(
        "at", "stage", "kind", "head", "seen", "brief", title="Briefs", title_justify="left"
    )
    for brief in briefs:
        lines = str(brief.get("text", "")).splitlines()
        shown = "\n".join(lines[:6]) + ("\n…" if len(lines) > 6 else "")
        table.add_row(
            iso(brief.get("at", 0.0)),
            brief.get("stage", ""),
            brief.get("kind", ""),
            str(brief.get("head", ""))[:10] or "-",
            str(brief.get("count", 1)),
            esc(shown),
        )
    console.print(table)


def print_event(msg: StageChanged | Alert) -> None:
    """One line of `conveyor tail`."""
    if isinstance(msg, StageChanged):
        console.print(
            f"{iso(msg.at)} [bold]{msg.task_id}[/] {msg.old or '-'} → "
            f"[cyan]{msg.new}[/] ({esc(msg.cause)})"
        )
    else:
        console.print(f"{iso(msg.at)} [yellow]{msg.level}[/] {esc(msg.text)}")


def print_followed(msg: StageChanged | Alert, elapsed: float) -> None:
    """One line of `conveyor run`, stamped with the seconds since submission."""
    if isinstance(msg, StageChanged):
        console.print(
            f"[dim]{elapsed:6.1f}s[/] [bold]{msg.task_id}[/] "
            f"{msg.old or '-'} → [cyan]{msg.new}[/]  [dim]({esc(msg.cause)})[/]"
        )
    else:
        console.print(f"[dim]{elapsed:6.1f}s[/] [yellow]alert[/] {esc(msg.text)}")


def _print_control(control: dict[str, Any] | None) -> None:
    """Who holds the leader lease and who stands by (only with `control.leader_lease`)."""
    if not control:
        return
    active = control.get("active")
    if active:
        line = (
            f"Control: active {esc(active['id'])} on {esc(active.get('host', '?'))} "
            f"since {iso(active.get('since', 0.0))}, epoch {active.get('epoch', 0)}"
        )
    else:
        line = f"Control: [red]no active control[/] {esc(str(control.get('error', '')))}"
    standbys = ", ".join(f"{s['id']} on {s.get('host', '?')}" for s in control.get("standbys", []))
    console.print(line + f"; standbys: {esc(standbys) if standbys else 'none'}")
