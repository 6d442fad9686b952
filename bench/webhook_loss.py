"""Lost webhooks: do Plane-driven items still finish, and how much later?

Runs the same work items twice on a fake Gitea and a fake Plane wired through
Conveyor's real gateway (`tests/integrations_env.py`): once with every webhook
delivered (the floor), once with `--loss` of them dropped by the senders (as a
webhook that never arrives). A human's part is played by the script: it moves
each card to In Progress, and to Approved once Conveyor's status says the
analysis waits for it (what its alert tells a human). The Reconciler has to
make up for every lost CI status, merge and board move.

Measured and printed (never asserted): items done per run, the median and max
time from In Progress to done, the extra latency of the lossy run against the
floor, webhooks dropped by kind, and the Reconciler's replays and Plane polls.

    PYTHONPATH=. .venv/bin/python bench/webhook_loss.py [--items 5] [--loss 0.3]
        [--grace-s 2] [--poll-s 1] [--deadline-s 300] [--seed 7]

SPEC §8 has no figure for this; the target is that every item finishes (a lost
webhook costs at most its stage's grace, or a poll interval).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.server import EmbeddedNats
from conveyor.clock import SystemClock
from conveyor.errors import ConveyorError
from tests.integrations_env import World, world


def _stage(env: World, task_id: str) -> str:
    try:
        return str(env.harness.task(task_id).get("stage", ""))
    except ConveyorError:  # not created yet
        return ""


def _awaiting(env: World, task_id: str) -> bool:
    try:
        task = env.harness.task(task_id)
    except ConveyorError:  # not created yet
        return False
    return task.get("stage") == "analysis" and "awaiting approval" in task.get("last_reason", "")


def run(tmp: Path, args: argparse.Namespace, loss: float) -> dict[str, Any]:
    """One run of `--items` items at `loss`; returns its figures."""
    server = EmbeddedNats(tmp / "nats")
    server.start()
    reconciler = {"interval_s": 0.5, "grace_s": args.grace_s, "plane_poll_s": args.poll_s}
    latencies: list[float] = []
    clock = SystemClock()
    done = 0
    try:
        with world(
            tmp / "world",
            server.url,
            drop_rate=loss,
            seed=args.seed,
            reconciler=reconciler,
            queue={"per_repo_concurrency": 2},
        ) as env:
            started: dict[str, tuple[str, float]] = {}
            for n in range(args.items):
                task_id, plane_id = env.start_item(f"Bench item {n + 1}")
                started[task_id] = (plane_id, time.monotonic())
            approved: set[str] = set()
            finished: dict[str, float] = {}
            deadline = time.monotonic() + args.deadline_s
            while len(finished) < len(started) and time.monotonic() < deadline:
                for task_id, (plane_id, _) in started.items():
                    if task_id in finished:
                        continue
                    if task_id not in approved and _awaiting(env, task_id):
                        env.plane.move(plane_id, "Approved")
                        approved.add(task_id)
                    if _stage(env, task_id) == "done":
                        finished[task_id] = time.monotonic()
                clock.sleep(0.2)
            for task_id, at in finished.items():
                latencies.append(at - started[task_id][1])
            done = len(finished)
            dropped = Counter(
                str(d.get("event") or "plane issue")
                for d in env.gitea.deliveries + env.plane.deliveries
                if d.get("dropped")
            )
            sent = len(env.gitea.deliveries) + len(env.plane.deliveries)
            status = env.harness.client.request("conveyor.status.reconciler")
    finally:
        server.stop()
    return {
        "loss": loss,
        "done": done,
        "latencies": latencies,
        "dropped": dropped,
        "sent": sent,
        "replayed": status.get("replayed_total", 0),
        "polled_events": status.get("events_total", 0),
    }


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5)
    parser.add_argument("--loss", type=float, default=0.3)
    parser.add_argument("--grace-s", type=float, default=2.0)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--deadline-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="conveyor-webhook-loss-") as scratch:
        floor = run(Path(scratch) / "floor", args, 0.0)
        lossy = run(Path(scratch) / "lossy", args, args.loss)
    print(f"items: {args.items}, grace {args.grace_s:g} s, Plane poll every {args.poll_s:g} s")
    for name, fig in (("no loss (floor)", floor), (f"{args.loss:.0%} lost", lossy)):
        print(
            f"  {name:16} done {fig['done']}/{args.items}; in progress -> done: "
            f"{_fmt(fig['latencies'])}; webhooks sent {fig['sent']}, dropped "
            f"{sum(fig['dropped'].values())} {dict(fig['dropped'])}; reconciler gate replays "
            f"{fig['replayed']}, polled events {fig['polled_events']}"
        )
    if floor["latencies"] and lossy["latencies"]:
        extra = statistics.median(lossy["latencies"]) - statistics.median(floor["latencies"])
        print(f"  extra latency from lost webhooks (median): {extra:+.1f} s")
    verdict = "PASS" if lossy["done"] == args.items else "MISS"
    print(f"{verdict}: every item finishes despite {args.loss:.0%} lost webhooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
