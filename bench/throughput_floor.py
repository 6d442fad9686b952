"""The floor of the throughput bench: N items' per-item work, `--lanes` wide, without Conveyor.

Each lane is a `stage_overhead_floor.FloorSide` (the same git operations, forge
calls, agent spawns and gate reads as Conveyor, in a plain loop) with its own data
directory, taking every `lanes`-th item one after another. It runs as its own
process so the bench can read its CPU time (and its children's) from the kernel.
Prints one JSON line: {"items", "seconds", "cpu_s", "failed", "cpu_split"}; CPU is
counted over the timed part only, as on the Conveyor side.

    .venv/bin/python bench/throughput_floor.py --items N --lanes 8 --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_overhead_floor import FloorSide

from conveyor import logs


def _lane(side: FloorSide, count: int) -> int:
    """Deliver `count` items one after another; return how many failed."""
    failed = 0
    for _ in range(count):
        task_id = f"{side.repo_cfg.prefix}-{side.next_number}"
        side.next_number += 1
        try:
            side._one(task_id)
        except Exception as exc:  # a failed item is a figure, not the end of the run
            print(f"floor: {task_id} failed: {exc}", file=sys.stderr)
            failed += 1
    return failed


def _cpu_s() -> tuple[float, float]:
    """CPU seconds of this process (every thread), and of its reaped children (git, agents)."""
    mine, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return mine.ru_utime + mine.ru_stime, children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    logs.configure("warning")
    sides = [FloorSide(args.workdir / f"lane{n}") for n in range(args.lanes)]
    for side in sides:
        side.start()
    counts = [len(range(n, args.items, args.lanes)) for n in range(args.lanes)]
    cpu_before = _cpu_s()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        failed = sum(pool.map(_lane, sides, counts))
    seconds = time.perf_counter() - started
    cpu_after = _cpu_s()
    own, children = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    figures = {"items": args.items, "seconds": seconds, "cpu_s": own + children, "failed": failed}
    figures["cpu_split"] = {"floor": own, "floor+": children}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
