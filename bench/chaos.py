"""SPEC §8 "Recovery" under chaos: kill -9 a random process every few seconds.

N work items are spread over R demo repositories and driven to `done` by the
Procfile processes `control` and `launcher` (each `conveyor up --parts ...` in
its own subprocess) on an embedded nats-server. A killer thread sends SIGKILL
every uniform(min, max) seconds to one random victim: the control process, the
launcher process, nats-server, or a running agent (its whole process group:
the `conveyor.runwrap` wrapper and the demo agent under it). Killed processes
are started again after a short pause, as a supervisor would; one that exits by
itself is restarted too, and counted.

Measured and printed (never asserted):

- items done, lost (not done by the deadline) and escalated;
- duplicated external effects: per item, more than one `pr_opened` or
  `pr_merged` in the local forge's `effects.jsonl`, and tracker comments posted
  twice (the same key, or a stage comment more often than the task's history
  has that stage change);
- recovery times, against SPEC §8: agent killed -> its job leaves `running`
  (polled in the `conveyor_jobs` KV bucket), target 3 s; control process
  restarted -> the first stage change of any in-flight task (from the stored
  task histories, stamped by the StageEngine), target 5 s. That second figure
  is an upper bound: it includes whatever agent work the next stage change
  waited for. A sample is "disturbed" when another kill landed before it
  resolved; the median and max are given for all samples and undisturbed ones.

    .venv/bin/python bench/chaos.py [--items 50] [--repos 2] [--kill-every 5-15]
                                    [--deadline-s 900] [--seed N] [--agent-s 1.0]
                                    [--workdir DIR] [--keep]

The agents are the demo agent, made to work `--agent-s` seconds per job so that
an agent kill finds one running. Everything started is stopped on exit, also
after Ctrl-C or an error, and a last sweep kills any process whose command line
or working directory is inside the scratch directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from actors.stage_policy import Task
from bus import subjects
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from conveyor.pipeline import AGENT_ROLES, DONE
from gateways.tracker import LocalTracker

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_cluster import Cluster, render_config
from chaos_report import Report, Sample
from chaos_threads import PARTS, AgentWatch, Killer

CLOCK = SystemClock()


READY_TIMEOUT_S = 60.0
SETTLE_S = 20.0
POLL_S = 0.2
PROGRESS_S = 30.0
BRANCH_ITEM = re.compile(r"^feature/([A-Z][A-Z0-9]*-[0-9]+)-")


class BenchError(Exception):
    """The bench itself could not run (not a finding about Conveyor)."""


# --------------------------------------------------------------------------- the run


def plan(items: int, repos: int) -> list[tuple[str, str]]:
    """(item id, repo) for each item, round-robin over the repositories."""
    counters = Counter[int]()
    out = []
    for i in range(items):
        r = i % repos + 1
        counters[r] += 1
        out.append((f"R{r}-{counters[r]}", f"repo{r}"))
    return out


def _description(agent_s: float) -> str:
    if agent_s <= 0:
        return "Chaos bench item."
    steer = " ".join(f"{r}=slow:{agent_s:g}*always" for r in AGENT_ROLES)
    return "Chaos bench item.\n\ndemo: " + steer


def _wait_ready(client: Client, cluster: Cluster, deadline_s: float) -> None:
    end = CLOCK.monotonic() + deadline_s
    while CLOCK.monotonic() < end:
        with contextlib.suppress(Exception):
            if client.request(subjects.STATUS).get("healthy"):
                return
        CLOCK.sleep(0.2)
    raise BenchError(f"Conveyor not healthy within {deadline_s:g} s\n{cluster.logs()}")


def run(
    items: int,
    repos: int,
    kill_min_s: float,
    kill_max_s: float,
    deadline_s: float,
    seed: int,
    workdir: Path,
    *,
    agent_s: float = 1.0,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Run the chaos bench in `workdir` (created if missing) and return what it measured."""
    say = say or (lambda _line: None)
    # nats-py logs every failed reconnect with a traceback; nats-server dies on purpose here.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(items, repos, kill_min_s, kill_max_s, deadline_s, seed, agent_s)
    report.workdir = str(workdir)
    rng = random.Random(seed)
    cluster = Cluster(workdir)
    client: Client | None = None
    killer: Killer | None = None
    watch: AgentWatch | None = None
    try:
        cluster.start_nats()
        cluster.config.write_text(render_config(cluster.data, cluster.nats.url, repos))
        for part in PARTS:
            cluster.spawn(part)
        client = Client(cluster.nats.url, timeout_s=5.0)
        _wait_ready(client, cluster, READY_TIMEOUT_S)
        say(f"Conveyor ready; scratch {workdir}")
        t0 = CLOCK.monotonic()
        watch = AgentWatch(cluster.nats.url, report, t0)
        killer = Killer(cluster, report, rng, t0, watch.add, say)
        watch.start()
        killer.start()
        report.timed_out = not _drive(client, plan(items, repos), agent_s, t0 + deadline_s, say)
        report.elapsed_s = CLOCK.monotonic() - t0
        killer.stopping.set()
        killer.join()
        killer = None
        say(f"[{report.elapsed_s:7.1f} s] chaos over; letting the pipeline settle")
        _settle(cluster, client, watch, report)
        watch.stopping.set()
        watch.join()
        watch = None
        _collect(cluster, client, report, [i for i, _ in plan(items, repos)])
    finally:
        for thread in (killer, watch):
            if thread is not None:
                thread.stopping.set()
                thread.join(timeout=30)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        cluster.stop()
    return report


def _drive(
    client: Client,
    planned: list[tuple[str, str]],
    agent_s: float,
    deadline: float,
    say: Callable[[str], None],
) -> bool:
    """Submit every item, approve analyses, until every item settled; False at the deadline."""
    description = _description(agent_s)
    submitted: set[str] = set()
    refused: dict[str, Any] = {}
    approved: dict[str, float] = {}
    settled: set[str] = set()
    next_progress = CLOCK.monotonic() + PROGRESS_S
    while CLOCK.monotonic() < deadline:
        for item, repo in planned:
            if item in submitted:
                continue
            body = {"repo": repo, "title": f"Chaos item {item}", "id": item}
            body["description"] = description
            try:
                reply = client.command("submit", body)
            except Exception:
                break  # the control process or the bus is away: try again next round
            if reply.get("ok"):
                submitted.add(item)
            else:
                if reply.get("error") != refused.get(item):
                    refused[item] = reply.get("error")
                    say(f"submit {item} refused: {reply.get('error')}")
                break
        try:
            rows = [row for page in client.pages(state="all") for row in page["tasks"]]
        except Exception:
            rows = None
        if isinstance(rows, list):
            for row in rows:
                item = row.get("id", "")
                if row.get("stage") == DONE or row.get("escalated"):
                    if item not in settled:
                        settled.add(item)
                        say(f"{item}: {'done' if row.get('stage') == DONE else 'escalated'}")
                    continue
                waiting = "awaiting approval" in (row.get("reason") or "")
                # Re-approve only after a while: the first approve may still be in flight.
                recent = CLOCK.monotonic() - approved.get(item, -1e9) < 2.0
                if row.get("stage") == "analysis" and not row.get("approved") and waiting:
                    if recent:
                        continue
                    approved[item] = CLOCK.monotonic()
                    with contextlib.suppress(Exception):
                        client.command("approve", {"id": item})
        if len(submitted) == len(planned) and all(i in settled for i, _ in planned):
            return True
        if isinstance(rows, list) and CLOCK.monotonic() >= next_progress:
            next_progress = CLOCK.monotonic() + PROGRESS_S
            stages = Counter(r.get("stage", "?") for r in rows if r.get("id") not in settled)
            busy = ", ".join(f"{k} {v}" for k, v in sorted(stages.items())) or "-"
            say(f"progress: {len(settled)}/{len(planned)} settled; in flight: {busy}")
        CLOCK.sleep(POLL_S)
    return False


def _settle(cluster: Cluster, client: Client, watch: AgentWatch, report: Report) -> None:
    """With the killer stopped: everything running, healthy, killed jobs resolved."""
    with cluster.lock:
        for part in PARTS:
            proc = cluster.procs.get(part)
            if proc is None or proc.poll() is not None:
                cluster.spawn(part)
        if not cluster.nats.running:
            cluster.nats.start()
    _wait_ready(client, cluster, READY_TIMEOUT_S)
    end = CLOCK.monotonic() + SETTLE_S
    while CLOCK.monotonic() < end:
        with watch.lock:
            if not watch.pending:
                break
        CLOCK.sleep(0.1)
    with watch.lock:
        report.agent_unresolved = [k.job_id for k, _ in watch.pending]


def _collect(cluster: Cluster, client: Client, report: Report, ids: list[str]) -> None:
    store = client.bus.store(subjects.BUCKET_TASKS, Task)
    tasks = {key: entry.value for key, entry in store.load_all().items() if key in ids}
    tracker = LocalTracker(cluster.data / "tracker")
    # The tracker is told by the control process, a little after the stage change.
    end = CLOCK.monotonic() + SETTLE_S
    while CLOCK.monotonic() < end:
        done = [t.id for t in tasks.values() if t.stage == DONE]
        if all(tracker.state(i) == DONE for i in done):
            break
        CLOCK.sleep(0.2)
    for item in ids:
        task = tasks.get(item)
        if task is None:
            report.lost[item] = "no task stored (an acknowledged submit vanished)"
        elif task.stage == DONE:
            report.done.append(item)
        else:
            why = (
                f"stage {task.stage}, step {task.step}, job {task.job_id or '-'} "
                f"{task.job_status or '-'}: {task.last_reason}"
            )
            (report.escalated if task.escalated else report.lost)[item] = why
    _count_effects(cluster.data, report, ids)
    _count_comments(tracker, tasks, report)
    _count_runs(cluster.data, report, ids)
    _recovery(report, tasks)


def _count_effects(data: Path, report: Report, ids: list[str]) -> None:
    forge = data / "forge"
    path = forge / "effects.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    per_item: dict[str, Counter[str]] = {i: Counter() for i in ids}
    for line in lines:
        if not line.strip():
            continue
        effect = json.loads(line)
        kind = effect.get("kind", "?")
        report.effects[kind] += 1
        branch = effect.get("head", "")
        if kind == "pr_merged":
            pull = forge / "pulls" / effect.get("repo", "") / f"{effect.get('number')}.json"
            with contextlib.suppress(OSError, ValueError):
                branch = json.loads(pull.read_text()).get("head", "")
        match = BRANCH_ITEM.match(branch or "")
        if match and match.group(1) in per_item:
            per_item[match.group(1)][kind] += 1
    for item, counts in per_item.items():
        for kind in ("pr_opened", "pr_merged"):
            if counts[kind] > 1:
                report.duplicated[kind] += counts[kind] - 1
                report.duplicate_details.append(f"{item}: {kind} x{counts[kind]}")


def _count_comments(tracker: LocalTracker, tasks: dict[str, Task], report: Report) -> None:
    effects = tracker.effects_path
    lines = effects.read_text().splitlines() if effects.exists() else []
    keys = Counter(
        (e.get("work_item_id"), e.get("key"))
        for e in (json.loads(line) for line in lines if line.strip())
        if e.get("kind") == "comment_posted"
    )
    for (item, key), count in sorted(keys.items()):
        if count > 1:
            report.duplicated_comments += count - 1
            report.comment_details.append(f"{item}: comment key {key} posted x{count}")
    for item, task in sorted(tasks.items()):
        expected = Counter(_history_comment(h.old, h.new, h.cause) for h in task.history)
        posted = Counter(
            c for c in tracker.comments(item) if c.startswith(("Stage ", "Conveyor accepted"))
        )
        for text, count in posted.items():
            if count > expected.get(text, 0):
                report.duplicated_comments += count - expected.get(text, 0)
                report.comment_details.append(
                    f"{item}: {text!r} posted x{count}, in history x{expected.get(text, 0)}"
                )


def _history_comment(old: str, new: str, cause: str) -> str:
    if not old:
        return f"Conveyor accepted this work item ({cause})."
    return f"Stage {old} → {new}: {cause}"


def _count_runs(data: Path, report: Report, ids: list[str]) -> None:
    """Agent attempts per job beyond the first that no agent kill of ours explains."""
    killed = Counter(k.job_id for k in report.kills if k.victim == "agent")
    for item in ids:
        attempts: Counter[str] = Counter()
        for log in (data / "runs" / item).glob("*/output.log"):
            rest = log.parent.name.rsplit(".", 1)[0]
            attempts[f"{item}.{rest}"] += 1
        for job, count in attempts.items():
            extra = count - 1 - killed.get(job, 0)
            if extra > 0:
                report.extra_runs[job] = extra


def _recovery(report: Report, tasks: dict[str, Task]) -> None:
    kills = sorted(report.kills, key=lambda k: k.wall)
    for kill in kills:
        if kill.victim == "agent" and kill.resolved_s is not None:
            end = kill.wall + kill.resolved_s
            kill.disturbed = any(
                o is not kill and kill.wall < o.wall < end and o.victim != "agent" for o in kills
            )
            report.agent_recovery.append(Sample(kill.resolved_s, kill.disturbed))
    changes = sorted(h.at for t in tasks.values() for h in t.history)
    for kill in kills:
        if kill.victim not in ("control", "nats-server") or kill.restart_wall is None:
            continue
        start = kill.restart_wall
        in_flight = [t for t in tasks.values() if _in_flight(t, start)]
        later = [at for at in changes if at > start]
        sample_list = report.control_recovery if kill.victim == "control" else report.nats_recovery
        if not in_flight or not later:
            if kill.victim == "control":
                report.control_unmeasured += 1
            else:
                report.nats_unmeasured += 1
            continue
        first = later[0]
        disturbed = any(
            o.victim in ("control", "nats-server", "launcher") and start < o.wall < first
            for o in kills
        )
        sample_list.append(Sample(first - start, disturbed))


def _in_flight(task: Task, at: float) -> bool:
    """The task existed at `at` and was not yet done."""
    before = [h for h in task.history if h.at <= at]
    return bool(before) and before[-1].new != DONE and not task.escalated


# --------------------------------------------------------------------------- command line


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        pair = (float(low), float(high or low))
    except ValueError as err:
        raise argparse.ArgumentTypeError("expected MIN-MAX seconds, e.g. 5-15") from err
    if pair[0] <= 0 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError("expected 0 < MIN <= MAX")
    return pair


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--repos", type=int, default=2)
    parser.add_argument("--kill-every", type=_range, default=(5.0, 15.0), metavar="MIN-MAX")
    parser.add_argument("--deadline-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--agent-s", type=float, default=1.0, help="seconds each agent works")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch dir (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.items < 1 or not 1 <= args.repos <= 9:
        parser.error("--items must be >= 1 and --repos between 1 and 9")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    keep = args.keep or args.workdir is not None
    try:
        report = run(
            args.items,
            args.repos,
            args.kill_every[0],
            args.kill_every[1],
            args.deadline_s,
            seed,
            workdir,
            agent_s=args.agent_s,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        print(f"interrupted; everything stopped; scratch kept: {workdir}", file=sys.stderr)
        return 130
    except BenchError as err:
        print(f"chaos bench failed: {err}\nscratch kept: {workdir}", file=sys.stderr)
        return 1
    print(report.render())
    findings = report.lost or report.duplicated_effects or report.duplicated_comments
    if keep or findings or report.errors or report.timed_out:
        # Findings keep their logs; a clean run leaves nothing behind.
        print(f"\nlogs kept: {workdir}/{{control,launcher,nats-server}}.log")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
