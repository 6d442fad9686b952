"""The floor of the throughput bench: N items' per-item work, `--lanes` wide, without Conveyor.

Each lane takes its items one after another, doing what `stage_overhead_floor.FloorSide`
does (the same git operations, forge calls, agent spawns and gate reads as
Conveyor, in a plain loop). Two layouts:

- `shared` (the spec's): the items go round-robin over `--repos` repositories
  (repo1..repoN, as on the Conveyor side), and the lanes over the repositories
  (8 lanes on 4: two per repository). Lanes sharing a repository do what a plain
  script sharing one must: every change to the workspace clone under the
  repository's lock, and the merge under a per-repository merge lock, where a
  branch behind main is rebased onto it, pushed and its CI run again before the
  merge (Conveyor's merge step). A done item's worktree and branch are removed, as
  Conveyor's Janitor does with `retention.delete_merged_branches`, which the
  throughput bench turns on for Conveyor's side: only while no job uses the
  workspace clone (the other lane's job holds it), else tried again after the
  lane's next item, as the Janitor tries again on its next pass.
- `lanes` (the earlier floor): each lane has its own data directory and
  repository, so it never shares one, never rebases nor re-runs CI.

It runs as its own process so the bench can read its CPU time (and its children's)
from the kernel. Prints one JSON line: {"items", "seconds", "cpu_s", "failed",
"cpu_split", "layout", "rebases", "ci_runs", "branches_removed", "branches_left"};
CPU is counted over the timed part only, as on the Conveyor side.

    .venv/bin/python bench/throughput_floor.py --items N --lanes 8 --workdir DIR
                                               [--layout shared|lanes] [--repos 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_overhead_floor import FloorSide
from stage_overhead_probe import TITLE

from actors import janitor_files
from actors.jobs.context import RepoLocks
from conveyor import logs, validate
from conveyor.config import python_argv
from gateways import git
from gateways.git_branches import WorkspaceBusy
from gateways.local_forge import LocalForge

LAYOUTS = ("shared", "lanes")
CHECK_COMMAND = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""The demo repositories' CI check, as the Conveyor side's config has it."""


class CountingForge(LocalForge):
    """The local forge, counting the CI runs it starts (on a push, or awaited by a merge)."""

    def __init__(self, root: Path, checks: dict[str, list[str]], *, check_timeout_s: float) -> None:
        super().__init__(root, checks, check_timeout_s=check_timeout_s)
        self.ci_runs = 0
        self._count_lock = threading.Lock()

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        with self._count_lock:
            self.ci_runs += 1
        super().on_push(repo, branch, sha)


class LaneSide(FloorSide):
    """One repository's floor, used by every lane that works on it.

    `shared`: lanes share it, so the workspace clone is locked and the merge is
    Conveyor's (lock, rebase when behind main, push, CI again, merge).
    """

    def __init__(self, data_dir: Path, *, repo: str, shared: bool, repos: int) -> None:
        overrides = {"repos": _repo_tables(repos)} if shared else None
        super().__init__(data_dir, repo=repo, overrides=overrides)
        checks = {r.name: python_argv(r.check_command) for r in self.cfg.repos if r.check_command}
        self.counting = CountingForge(
            self.layout.forge, checks, check_timeout_s=self.cfg.forge.check_timeout_s
        )
        self.forge = self.counting
        self.shared = shared
        self.rebases = 0
        self._repo_locks = RepoLocks(self.layout.workspace)
        self._merge_lock = threading.Lock()
        # Done items whose worktree and branch wait for the workspace to be free.
        self._removals: list[tuple[str, str]] = []
        self._removals_lock = threading.Lock()
        self.removed = 0

    def _locked(self) -> AbstractContextManager[object]:
        return self._repo_locks(self.repo) if self.shared else super()._locked()

    def deliver(self, task_id: str) -> None:
        self._one(task_id)
        if self.shared:
            self._remove_done((task_id, validate.branch_for(task_id, TITLE)))

    def _remove_done(self, done: tuple[str, str]) -> None:
        """Remove every done item's worktree and branch that no job's use of the clone holds up."""
        with self._removals_lock:
            todo, self._removals = [*self._removals, done], []
        left = []
        for task_id, branch in todo:
            try:
                self._remove_branch(task_id, branch)
            except WorkspaceBusy:
                left.append((task_id, branch))
        with self._removals_lock:
            self._removals.extend(left)
            self.removed += len(todo) - len(left)

    @property
    def left(self) -> int:
        with self._removals_lock:
            return len(self._removals)

    def _merge(self, task_id: str, branch: str) -> None:
        if not self.shared:
            super()._merge(task_id, branch)
            return
        # The merge lease: one merge at a time per repository, from the fetch of main on.
        with self._merge_lock:
            with self._locked():
                worktree = self._prepare_worktree_locked(task_id, branch)
                behind = not git.is_ancestor(worktree, "origin/main", "HEAD")
                if behind and git.rebase(worktree, "origin/main") is not None:
                    raise RuntimeError(f"floor: {branch} does not rebase onto main")
                head = git.push_branch(worktree, branch) if behind else git.head_sha(worktree)
            if behind:
                self.rebases += 1
                status = self.forge.await_checks(self.repo, branch, head)
            else:
                status = self.forge.commit_status(self.repo, head)
            if status is None or status.state != "success":
                state = status.state if status else "missing"
                raise RuntimeError(f"floor: CI of {branch} at {head[:12]}: {state}")
            super()._merge(task_id, branch)

    def _remove_branch(self, task_id: str, branch: str) -> None:
        """What Conveyor's Janitor does once a task is done: worktree and branch go."""
        head = self.forge.branch_head(self.repo, branch)
        janitor_files.remove_branch(self.layout, self.repo, task_id, branch)
        if head is not None:
            self.forge.delete_branch(self.repo, branch, expected_sha=head)


def _repo_tables(repos: int) -> list[dict[str, object]]:
    """repo1..repoN (prefixes R1..RN) from the demo template, as the Conveyor side has them."""
    return [
        {"name": f"repo{n}", "prefix": f"R{n}", "template": "demo", "check_command": CHECK_COMMAND}
        for n in range(1, repos + 1)
    ]


def _lane(side: LaneSide, task_ids: list[str]) -> int:
    """Deliver `task_ids` one after another; return how many failed."""
    failed = 0
    for task_id in task_ids:
        try:
            side.deliver(task_id)
        except Exception as exc:  # a failed item is a figure, not the end of the run
            print(f"floor: {task_id} failed: {exc}", file=sys.stderr)
            failed += 1
    return failed


def _shared_lanes(
    args: argparse.Namespace,
) -> tuple[list[LaneSide], list[LaneSide], list[list[str]]]:
    """One side per repository; lanes round-robin over them, items round-robin over their lanes."""
    sides = [
        LaneSide(args.workdir, repo=f"repo{n}", shared=True, repos=args.repos)
        for n in range(1, args.repos + 1)
    ]
    lanes = [sides[n % args.repos] for n in range(args.lanes)]
    work: list[list[str]] = [[] for _ in range(args.lanes)]
    taken = [0] * args.repos
    for i in range(args.items):
        r = i % args.repos
        mine = [n for n in range(args.lanes) if n % args.repos == r]
        work[mine[taken[r] % len(mine)]].append(f"R{r + 1}-{1 + i // args.repos}")
        taken[r] += 1
    return sides, lanes, work


def _own_lanes(args: argparse.Namespace) -> tuple[list[LaneSide], list[LaneSide], list[list[str]]]:
    """A side (data directory, repository) per lane; every `lanes`-th item to each."""
    sides = [
        LaneSide(args.workdir / f"lane{n}", repo="demo", shared=False, repos=1)
        for n in range(args.lanes)
    ]
    work = [
        [f"{side.repo_cfg.prefix}-{k}" for k in range(1, len(range(n, args.items, args.lanes)) + 1)]
        for n, side in enumerate(sides)
    ]
    return sides, sides, work


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
    parser.add_argument("--repos", type=int, default=4, help="shared layout only")
    parser.add_argument("--layout", choices=LAYOUTS, default="shared")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.layout == "shared" and not 1 <= args.repos <= args.lanes:
        parser.error("the shared layout needs 1 <= --repos <= --lanes")
    logs.configure("warning")
    sides, lanes, work = (_shared_lanes if args.layout == "shared" else _own_lanes)(args)
    for side in sides:
        side.start()
    cpu_before = _cpu_s()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        failed = sum(pool.map(_lane, lanes, work))
    seconds = time.perf_counter() - started
    cpu_after = _cpu_s()
    own, children = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    figures = {"items": args.items, "seconds": seconds, "cpu_s": own + children, "failed": failed}
    figures["cpu_split"] = {"floor": own, "floor+": children}
    figures["layout"] = args.layout
    figures["rebases"] = sum(side.rebases for side in sides)
    figures["ci_runs"] = sum(side.counting.ci_runs for side in sides)
    figures["branches_removed"] = sum(side.removed for side in sides)
    figures["branches_left"] = sum(side.left for side in sides)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
