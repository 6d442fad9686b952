"""Launcher: runs agents, deploy commands and the built-in intake/merge steps for launch orders."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import pykka

from actors import launcher_policy as policy
from actors.common import subject_for
from actors.launcher_policy import Run
from actors.lease_policy import merge_lease, task_lease
from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists, Store, Versioned
from bus.effects import Ledger, effect_key
from bus.messages import (
    JobFinished,
    JobStarted,
    KillJob,
    LaunchOrder,
    LeaseAcquire,
    LeaseHolder,
    LeaseRelease,
    LeaseRenew,
    LeaseReply,
    RunHeartbeat,
    Tick,
    encode,
)
from conveyor import faults, procs, runwrap
from conveyor.clock import Clock, iso
from conveyor.config import Config
from conveyor.errors import ConveyorError, Fenced, InvalidField
from conveyor.layout import Layout
from conveyor.logs import get_logger
from conveyor.pipeline import ROLE_INTAKE, ROLE_MERGE
from gateways import git
from gateways.forge import Forge, PullRequest

log = get_logger(__name__)

LOG_TAIL_BYTES = 64 * 1024
DEPLOY_MARKER = "deploy.json"
"""In a run directory: this run is a deploy command (its argv), not an agent."""


class Abandoned(ConveyorError):
    """This launcher stopped; the run is left for the next incarnation to adopt."""


class LeaseBusy(ConveyorError):
    """The task's transition lease is held by another live executor."""


class TransitionFence:
    """A held transition lease; `check` proves it is still ours right before an effect."""

    def __init__(self, launcher: Launcher, name: str, task_id: str, revision: int) -> None:
        self._launcher = launcher
        self.name = name
        self.task_id = task_id
        self.revision = revision

    def check(self, step: str) -> None:
        """Raise `Fenced` if the lease was reclaimed or released since it was granted."""
        reply = self._launcher._lease(
            subjects.LEASE_RENEW,
            LeaseRenew(name=self.name, task_id=self.task_id, revision=self.revision),
        )
        if not reply.granted:
            raise Fenced(f"transition lease {self.name} lost before {step}: {reply.reason}")
        self.revision = reply.revision or self.revision


class RunStarted(msgspec.Struct, frozen=True):
    """Run thread -> Launcher: the process exists."""

    run_id: str
    pid: int
    create_time: float


class RunDone(msgspec.Struct, frozen=True):
    """Run thread -> Launcher: the run and its post-steps are over."""

    run_id: str
    exit_code: int | None
    head_sha: str = ""
    error: str = ""
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    defer_s: float = 0.0


class LauncherStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Launcher (ask)."""


class Slots:
    """Free launch slots, reserved on the loop thread before an order reaches the actor."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._used = 0
        self._lock = threading.Lock()

    def free(self) -> int:
        with self._lock:
            return self.total - self._used

    def reserve(self) -> None:
        with self._lock:
            self._used += 1

    def release(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used


def kill_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process, its group and every descendant; SIGKILL what is left after grace."""
    if pid <= 1 or pid == os.getpid() or pid == os.getpgrp():
        log.error("launcher.kill_refused", pid=pid, reason="would kill Conveyor itself")
        return
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def check_health(
    url: str, *, timeout_s: float, interval_s: float, clock: Clock, stop: threading.Event
) -> tuple[bool, str]:
    """Poll `url` until it answers 2xx or `timeout_s` passes; `(ok, what it last answered)`."""
    deadline = clock.monotonic() + timeout_s
    last = "not checked"
    with httpx.Client(follow_redirects=False) as client:
        while True:
            remaining = deadline - clock.monotonic()
            try:
                answer = client.get(url, timeout=max(0.1, min(remaining, 10.0)))
                last = f"HTTP {answer.status_code}"
                if answer.is_success:
                    return True, last
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            if clock.monotonic() + interval_s > deadline:
                return False, f"{last} (no 2xx within {timeout_s:g}s)"
            if stop.wait(interval_s):
                raise Abandoned(url)


def spawn(
    argv: list[str],
    *,
    cwd: Path,
    stdin: Any,
    log_path: str,
    env: dict[str, str],
) -> tuple[subprocess.Popen[bytes], float]:
    """Start `argv` in its own session, output appended to `log_path`; (process, create time).

    A create time of 0.0 means the process was gone before it could be read.
    """
    with Path(log_path).open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0
    return proc, create_time


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class Launcher(pykka.ThreadingActor):
    """Sole owner of the runs on its host; fences each launch with a KV create."""

    def __init__(
        self,
        bus: Bus,
        store: Store[Run],
        effects: Ledger,
        forge: Forge,
        clock: Clock,
        cfg: Config,
        slots: Slots,
    ) -> None:
        super().__init__()
        self._bus, self._store, self._forge, self._clock, self._cfg = bus, store, forge, clock, cfg
        self._layout = Layout(cfg.data_path)
        self._slots = slots
        self._effects = effects
        self._host = socket.gethostname()
        # The name must survive a restart: a restarted launcher adopts the runs of its name.
        self._name = cfg.launcher.name or self._host
        self._runs: dict[str, Versioned[Run]] = {}
        self._procs: dict[str, int] = {}
        self._cancelled: set[str] = set()
        self._repo_locks: dict[str, threading.Lock] = {}
        self._started_at = 0.0
        # Set when this incarnation stops: its run threads leave finished agents to the
        # next incarnation's adoption instead of racing it through the post-steps.
        self._abandoned = threading.Event()

    def on_stop(self) -> None:
        self._abandoned.set()

    def on_start(self) -> None:
        self._started_at = self._clock.now()
        self._runs = {
            k: v for k, v in self._store.load_all().items() if v.value.launcher == self._name
        }
        for key, entry in list(self._runs.items()):
            run = entry.value
            if run.status == policy.FINISHED and not run.reported:
                self._report(key)
            elif run.status != policy.FINISHED:
                self._adopt(key)
        log.info(
            "launcher.started",
            name=self._name,
            slots=self._slots.total,
            adopted=sum(1 for r in self._runs.values() if r.value.status != "finished"),
        )

    def on_receive(self, message: Any) -> Any:
        try:
            match message:
                case Delivery(body=LaunchOrder() as order):
                    self._launch(order, message)
                case RunStarted():
                    self._on_started(message)
                case RunDone():
                    self._on_done(message)
                case KillJob():
                    self._kill(message)
                case LauncherStatus():
                    return self._status()
                case Tick():
                    self._heartbeat()
                case _:
                    log.warning("launcher.unknown_message", kind=type(message).__name__)
        except Fenced as err:
            log.error("launcher.fenced", error=str(err))  # noqa: TRY400 - expected
            self.stop()
        except Exception:
            log.exception("launcher.handle_failed", kind=type(message).__name__)
            if isinstance(message, Delivery):
                self._slots.release()
                message.nak(delay_s=2.0)
        return None

    # --- launching ----------------------------------------------------------------------

    def _launch(self, order: LaunchOrder, delivery: Delivery[Any]) -> None:
        key = policy.run_key(order.job_id, order.attempt)
        run_dir = self._layout.run_dir(order.job_id, order.attempt)
        try:
            deploy = policy.deploy_argv(
                order,
                self._cfg.repo(order.repo),
                worktree=str(self._layout.worktree(order.repo, order.task_id)),
                python=sys.executable,
            )
        except InvalidField:
            deploy = []  # an unknown repository fails in the run, like any agent's
        run = Run(
            id=key,
            job_id=order.job_id,
            attempt=order.attempt,
            task_id=order.task_id,
            repo=order.repo,
            role=order.role,
            stage=order.stage,
            visit=order.visit,
            branch=order.branch,
            host=self._host,
            launcher=self._name,
            started_at=self._clock.now(),
            run_dir=str(run_dir),
            log_path=str(run_dir / "output.log"),
            deploy_command=deploy,
        )
        try:
            revision = self._store.create(key, run)
        except KeyExists:
            # An earlier delivery of this order launched it (a late ack is not ownership).
            log.info("launcher.duplicate_order", job_id=order.job_id, attempt=order.attempt)
            self._slots.release()
            delivery.ack()
            return
        self._runs[key] = Versioned(run, revision)
        faults.point("launcher.run_recorded")
        delivery.ack()
        thread = threading.Thread(
            target=self._run_thread, args=(run, order), name=f"run-{key}", daemon=True
        )
        thread.start()
        log.info("launcher.launched", job_id=order.job_id, attempt=order.attempt, role=order.role)

    def _save(self, run: Run) -> None:
        current = self._runs[run.id]
        revision = self._store.update(run.id, run, expect=current.revision)
        self._runs[run.id] = Versioned(run, revision)

    def _on_started(self, started: RunStarted) -> None:
        entry = self._runs.get(started.run_id)
        if entry is None:
            return
        run = msgspec.structs.replace(
            entry.value, status=policy.RUNNING, pid=started.pid, create_time=started.create_time
        )
        self._save(run)
        if run.role not in (ROLE_INTAKE, ROLE_MERGE):
            # Built-in steps run inside this process: its pid must never be a kill target.
            self._procs[run.id] = started.pid
        self._bus.publish(
            subjects.JOBS_STARTED,
            JobStarted(
                job_id=run.job_id,
                attempt=run.attempt,
                run_id=run.id,
                host=run.host,
                pid=started.pid,
                create_time=started.create_time,
                log_path=run.log_path,
                started_at=run.started_at,
            ),
            msg_id=f"{run.id}:started",
        )

    def _on_done(self, done: RunDone) -> None:
        entry = self._runs.get(done.run_id)
        if entry is None or entry.value.status == policy.FINISHED:
            return
        run = msgspec.structs.replace(
            entry.value,
            status=policy.FINISHED,
            exit_code=done.exit_code,
            head_sha=done.head_sha,
            error=done.error,
            usage=done.usage,
            defer_s=done.defer_s,
            finished_at=self._clock.now(),
        )
        self._save(run)
        self._procs.pop(run.id, None)
        self._cancelled.discard(run.job_id)
        self._slots.release()
        self._report(run.id)
        log.info(
            "launcher.finished",
            job_id=run.job_id,
            attempt=run.attempt,
            exit_code=run.exit_code,
            error=run.error or None,
        )

    def _heartbeat(self) -> None:
        """Tell the Reaper which runs this launcher is still looking after."""
        now = self._clock.now()
        for key, entry in list(self._runs.items()):
            run = entry.value
            if run.status == policy.FINISHED and not run.reported:
                # The report failed (bus away) after the result was stored: send it again.
                self._report(key)
            elif run.status != policy.FINISHED:
                beat = RunHeartbeat(
                    job_id=run.job_id, attempt=run.attempt, launcher=self._name, at=now
                )
                self._bus.publish_core(subjects.HEARTBEATS, beat)

    def _report(self, key: str) -> None:
        run = self._runs[key].value
        finished = JobFinished(
            job_id=run.job_id,
            attempt=run.attempt,
            run_id=run.id,
            exit_code=run.exit_code,
            head_sha=run.head_sha,
            error=run.error,
            finished_at=run.finished_at or 0.0,
            usage=run.usage,
            defer_s=run.defer_s,
        )
        faults.point("launcher.finished_recorded")
        self._bus.publish(subject_for(finished), finished, msg_id=f"{run.id}:finished")
        faults.point("launcher.reported")
        self._save(msgspec.structs.replace(run, reported=True))

    def _kill(self, order: KillJob) -> None:
        for key, pid in list(self._procs.items()):
            if self._runs[key].value.job_id == order.job_id:
                self._cancelled.add(order.job_id)
                log.info("launcher.killing", job_id=order.job_id, pid=pid, reason=order.reason)
                grace = self._cfg.launcher.kill_grace_s
                threading.Thread(target=kill_tree, args=(pid, grace), daemon=True).start()

    def _adopt(self, key: str) -> None:
        """Resume a run a previous incarnation started: wait for it, or report its result."""
        run = self._runs[key].value
        self._slots.reserve()
        order = LaunchOrder(
            job_id=run.job_id,
            attempt=run.attempt,
            task_id=run.task_id,
            repo=run.repo,
            stage=run.stage,
            role=run.role,
            visit=run.visit,
            branch=run.branch,
            title="",
            description="",
        )
        thread = threading.Thread(
            target=self._adopt_thread, args=(run, order), name=f"adopt-{key}", daemon=True
        )
        thread.start()

    # --- run threads (blocking work, off the actor) -------------------------------------

    def _tell(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _ask(self, message: Any) -> None:
        """Like `_tell`, but return once the actor has handled it (stored it)."""
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self.actor_ref.ask(message, timeout=10.0)

    def _run_thread(self, run: Run, order: LaunchOrder) -> None:
        try:
            if order.role in (ROLE_INTAKE, ROLE_MERGE):
                self._tell(
                    RunStarted(
                        run_id=run.id, pid=os.getpid(), create_time=psutil.Process().create_time()
                    )
                )
                done = self._builtin(run, order)
            elif run.deploy_command:
                done = self._deploy(run, order)
            else:
                done = self._agent(run, order)
        except Abandoned:
            log.info("launcher.run_abandoned", job_id=run.job_id)
            return
        except Exception as err:
            log.exception("launcher.run_failed", job_id=run.job_id)
            done = RunDone(run_id=run.id, exit_code=None, error=f"{type(err).__name__}: {err}")
        self._tell(done)

    def _adopt_thread(self, run: Run, order: LaunchOrder) -> None:
        exit_file = Path(run.run_dir) / "exit_code"
        try:
            builtin = run.role in (ROLE_INTAKE, ROLE_MERGE)
            pid = None if builtin else _wrapper_pid(run, exit_file)
            if pid is not None:
                log.info("launcher.adopted", job_id=run.job_id, pid=pid)
                self._procs[run.id] = pid
                timeout_s = (
                    self._cfg.deploy.timeout_s
                    if run.deploy_command
                    else self._cfg.agents.for_role(run.role).timeout_s
                )
                remaining = run.started_at + timeout_s - self._clock.now()
                if not procs.wait_exit(pid, max(0.0, remaining)):
                    kill_tree(pid, self._cfg.launcher.kill_grace_s)
                    if run.deploy_command and run.job_id not in self._cancelled:
                        why = f"timed out after {timeout_s:g}s; process tree killed"
                        self._tell(self._finalize(run, order, None, why, Path(run.log_path)))
                        return
                    self._tell(
                        RunDone(
                            run_id=run.id,
                            exit_code=None,
                            error=f"timed out after {timeout_s:g}s; tree killed",
                        )
                    )
                    return
            recorded = runwrap.read_exit_file(exit_file)
            if recorded is None or builtin:
                done = RunDone(
                    run_id=run.id, exit_code=None, error="launcher died; run result unknown"
                )
            elif run.job_id in self._cancelled:
                done = RunDone(run_id=run.id, exit_code=recorded[0], error="killed: job cancelled")
            elif run.deploy_command:
                done = self._finalize(run, order, recorded[0], "", Path(run.log_path))
            else:
                done = self._post_steps(run, order, recorded[0])
        except Abandoned:
            log.info("launcher.run_abandoned", job_id=run.job_id)
            return
        except Exception as err:
            log.exception("launcher.adopt_failed", job_id=run.job_id)
            done = RunDone(run_id=run.id, exit_code=None, error=f"{type(err).__name__}: {err}")
        self._tell(done)

    def _repo_lock(self, repo: str) -> threading.Lock:
        return self._repo_locks.setdefault(repo, threading.Lock())

    def _prepare_worktree(self, order: LaunchOrder) -> Path:
        workspace = self._layout.workspace(order.repo)
        worktree = self._layout.worktree(order.repo, order.task_id)
        with self._repo_lock(order.repo):
            git.ensure_clone(self._forge.clone_url(order.repo), workspace)
            git.ensure_worktree(workspace, worktree, order.branch)
        return worktree

    @contextlib.contextmanager
    def _transition(self, order: LaunchOrder, *, wait: bool) -> Iterator[TransitionFence]:
        """Hold the task's transition lease for the side effects of one step.

        `wait`: an agent's work is done and must not be redone, so its post-steps wait
        for the lease (up to `leases.max_age_s`); a built-in step is cheap to defer.
        """
        name = task_lease(order.task_id)
        deadline = self._clock.now() + self._cfg.leases.max_age_s
        while True:
            grant = self._lease(
                subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=self._holder(order))
            )
            if grant.granted:
                break
            if not wait or self._clock.now() >= deadline:
                raise LeaseBusy(f"transition lease: {grant.reason}")
            log.info("launcher.transition_wait", job_id=order.job_id, reason=grant.reason)
            if self._abandoned.wait(self._cfg.leases.busy_retry_s):
                raise Abandoned(order.job_id)
        fence = TransitionFence(self, name, order.task_id, grant.revision)
        try:
            yield fence
        finally:
            self._lease(
                subjects.LEASE_RELEASE,
                LeaseRelease(name=name, task_id=order.task_id, revision=fence.revision),
            )

    def _builtin(self, run: Run, order: LaunchOrder) -> RunDone:
        try:
            with self._transition(order, wait=False) as fence:
                if order.role == ROLE_INTAKE:
                    worktree = self._prepare_worktree(order)
                    fence.check("push")
                    with self._repo_lock(order.repo):
                        sha = git.push_branch(worktree, order.branch)
                    return RunDone(run_id=run.id, exit_code=0, head_sha=sha)
                return self._merge_gate(run, order, fence)
        except LeaseBusy as err:
            return RunDone(
                run_id=run.id, exit_code=None, error=str(err), defer_s=self._cfg.leases.busy_retry_s
            )

    def _merge_gate(self, run: Run, order: LaunchOrder, fence: TransitionFence) -> RunDone:
        """Merge the pull request under the repository's merge lease (the only merge path).

        Already merged at this head: success, no lease, no second merge. Otherwise
        take the lease; a branch behind main is rebased, pushed and re-tested, an
        up-to-date one keeps its green CI; the merge names the head that was
        checked, and the lease is proven still ours right before it.
        """
        head = self._forge.branch_head(order.repo, order.branch)
        if head is None:
            return RunDone(run_id=run.id, exit_code=1, error="branch missing on forge")
        pull = self._forge.find_pull(order.repo, order.branch)
        if pull is not None and pull.merged and pull.head_sha == head:
            return RunDone(run_id=run.id, exit_code=0, head_sha=head)
        name = merge_lease(order.repo)
        grant = self._lease(
            subjects.LEASE_ACQUIRE, LeaseAcquire(name=name, holder=self._holder(order))
        )
        if not grant.granted:
            return RunDone(
                run_id=run.id,
                exit_code=None,
                error=f"merge lease: {grant.reason}",
                defer_s=self._cfg.leases.busy_retry_s,
            )
        done: RunDone | None = None
        try:
            done = self._merge_under_lease(run, order, name, grant.revision, fence)
            return done
        finally:
            # A protected repository's task keeps its merge lease until its confirmed
            # production deploy ends (the LeaseKeeper frees it then): nothing else may
            # merge into what is about to be deployed.
            keep = done is not None and done.exit_code == 0 and self._protected(order.repo)
            if not keep:
                self._lease(subjects.LEASE_RELEASE, LeaseRelease(name=name, task_id=order.task_id))

    def _protected(self, repo: str) -> bool:
        return any(r.name == repo and r.protected for r in self._cfg.repos)

    def _merge_under_lease(
        self, run: Run, order: LaunchOrder, name: str, revision: int, fence: TransitionFence
    ) -> RunDone:
        worktree = self._prepare_worktree(order)
        with self._repo_lock(order.repo):
            git.fetch(worktree)
            behind = not git.is_ancestor(worktree, "origin/main", "HEAD")
            if behind and not git.rebase(worktree, "origin/main"):
                return RunDone(run_id=run.id, exit_code=1, error="rebase onto main conflicts")
            # An earlier attempt may have rebased here and died before pushing: a local
            # head the forge does not have was never tested, so push and re-test it.
            behind = behind or git.head_sha(worktree) != self._forge.branch_head(
                order.repo, order.branch
            )
            if behind:
                fence.check("push")
            head = git.push_branch(worktree, order.branch) if behind else git.head_sha(worktree)
        if behind:
            # Re-test the rebased head; slow, and that is why merging is a job.
            status = self._forge.await_checks(order.repo, order.branch, head)
        else:
            status = self._forge.commit_status(order.repo, head)
        if status is None or status.state != "success":
            state = status.state if status else "missing"
            why = "re-test after rebase" if behind else "CI of the branch head"
            return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=f"{why}: {state}")
        pull = self._ensure_pull(order, head, "Opened by Conveyor before merge.", after_merge=True)
        if pull.merged:
            return RunDone(run_id=run.id, exit_code=0, head_sha=head)
        renewed = self._lease(
            subjects.LEASE_RENEW, LeaseRenew(name=name, task_id=order.task_id, revision=revision)
        )
        if not renewed.granted:
            return RunDone(
                run_id=run.id,
                exit_code=1,
                head_sha=head,
                error=f"merge lease lost before merging: {renewed.reason}",
            )
        number = pull.number
        try:
            fence.check("merge")
        except Fenced as err:
            return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=str(err))

        def _merge() -> str:
            merged = self._forge.merge_pull(order.repo, number, expected_head_sha=head)
            return merged.merge_commit or head

        def _merged_already() -> str | None:
            now = self._forge.find_pull(order.repo, order.branch)
            if now is not None and now.merged and now.head_sha == head:
                return now.merge_commit or head
            return None

        try:
            commit = self._effects.once(
                effect_key(order.task_id, "merge", head), _merge, _merged_already
            )
        except ConveyorError as err:
            return RunDone(run_id=run.id, exit_code=1, head_sha=head, error=str(err))
        faults.point("launcher.merged")
        log.info("launcher.merged", job_id=run.job_id, pull=number, head=head, rebased=behind)
        return RunDone(run_id=run.id, exit_code=0, head_sha=commit)

    def _ensure_pull(
        self, order: LaunchOrder, head: str, body: str, *, after_merge: bool
    ) -> PullRequest:
        """The branch's pull request, opened at most once per head (effect ledger).

        `after_merge`: a PR merged at an older head does not count (a rework after a
        merge needs a new one); post-steps leave that to the merge step.
        """

        def _current() -> PullRequest | None:
            pull = self._forge.find_pull(order.repo, order.branch)
            if pull is not None and after_merge and pull.merged and pull.head_sha != head:
                return None
            return pull

        existing = _current()
        if existing is not None:
            return existing

        def _open() -> str:
            title = f"{order.task_id}: {order.title or order.task_id}"
            return str(self._forge.open_pull(order.repo, order.branch, title, body).number)

        def _probe() -> str | None:
            found = _current()
            return str(found.number) if found is not None else None

        number = self._effects.once(effect_key(order.task_id, "pull", head), _open, _probe)
        return self._forge.get_pull(order.repo, int(number))

    def _holder(self, order: LaunchOrder) -> LeaseHolder:
        me = psutil.Process()
        return LeaseHolder(
            task_id=order.task_id,
            job_id=order.job_id,
            launcher=self._name,
            host=self._host,
            pid=me.pid,
            create_time=me.create_time(),
            boot_id=procs.boot_id(),
        )

    def _lease(self, subject: str, request: msgspec.Struct) -> LeaseReply:
        try:
            data = self._bus.request(subject, encode(request), timeout_s=10.0)
            return msgspec.json.decode(data, type=LeaseReply)
        except (ConveyorError, msgspec.DecodeError, msgspec.ValidationError) as err:
            return LeaseReply(granted=False, reason=f"lease keeper unreachable: {err}")

    def _agent(self, run: Run, order: LaunchOrder) -> RunDone:
        worktree = self._prepare_worktree(order)
        self._clear_previous_verdict(order, worktree)
        run_dir = Path(run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        prompt_path = run_dir / "prompt.md"
        prompt_path.write_text(policy.prompt(order))
        exit_file = run_dir / "exit_code"
        agent = self._cfg.agents.for_role(order.role)
        env = policy.agent_env(
            os.environ,
            order,
            repo=self._cfg.repo(order.repo),
            worktree=str(worktree),
            python=sys.executable,
            extra=agent.env,
        )
        argv = policy.wrapped_argv(
            agent.command,
            order,
            exit_file=str(exit_file),
            worktree=str(worktree),
            python=sys.executable,
        )
        with prompt_path.open("rb") as stdin:
            proc, create_time = spawn(
                argv, cwd=worktree, stdin=stdin, log_path=run.log_path, env=env
            )
        faults.point("launcher.spawned")
        self._tell(RunStarted(run_id=run.id, pid=proc.pid, create_time=create_time))
        self._procs[run.id] = proc.pid
        if not procs.wait_exit(proc.pid, agent.timeout_s):
            log.warning("launcher.timed_out", job_id=run.job_id, timeout_s=agent.timeout_s)
            kill_tree(proc.pid, self._cfg.launcher.kill_grace_s)
            proc.wait()
            return RunDone(
                run_id=run.id,
                exit_code=None,
                error=f"timed out after {agent.timeout_s:g}s; process tree killed",
            )
        proc.wait()
        faults.point("launcher.agent_exited")
        recorded = runwrap.read_exit_file(exit_file)
        exit_code = recorded[0] if recorded else proc.returncode
        if order.job_id in self._cancelled:
            return RunDone(run_id=run.id, exit_code=exit_code, error="killed: job cancelled")
        return self._post_steps(run, order, exit_code)

    # --- deploys Conveyor runs itself ---------------------------------------------------

    def _clear_previous_verdict(self, order: LaunchOrder, worktree: Path) -> None:
        """Take an earlier visit's verdict off the branch before this visit's work starts.

        The gate reads the branch head once the job ends, whatever way it ends: a job
        that fails before writing its verdict (reaped, attempts spent) must find no
        verdict rather than the previous visit's. Pushed every time, so a deletion a
        dead incarnation committed but never pushed reaches the forge too.
        """
        relative = policy.verdict_path(order.stage, order.task_id)
        if relative is None or order.role in (ROLE_INTAKE, ROLE_MERGE):
            return
        with self._transition(order, wait=True) as fence:
            stale = worktree / relative
            existed = stale.exists()
            stale.unlink(missing_ok=True)
            fence.check("push")
            with self._repo_lock(order.repo):
                git.commit_all(
                    worktree,
                    f"conveyor: {order.task_id} clear the previous {order.stage} verdict "
                    f"(visit {order.visit})",
                )
                git.push_branch(worktree, order.branch)
        if existed:
            log.info("launcher.verdict_cleared", job_id=order.job_id, path=relative)

    def _earlier_deploy(self, run: Run) -> tuple[int, Path] | None:
        """An earlier attempt of this job that already ran the deploy to its exit code.

        Its result is the deploy's: a new attempt (after a reap, or a lost report)
        finalizes it instead of deploying a second time.
        """
        for attempt in range(run.attempt - 1, 0, -1):
            run_dir = self._layout.run_dir(run.job_id, attempt)
            recorded = runwrap.read_exit_file(run_dir / "exit_code")
            if recorded is not None and (run_dir / DEPLOY_MARKER).exists():
                return recorded[0], run_dir / "output.log"
        return None

    def _deploy(self, run: Run, order: LaunchOrder) -> RunDone:
        """Run the repository's deploy command (not an agent), then finalize its verdict."""
        earlier = self._earlier_deploy(run)
        if earlier is not None:
            # No RunStarted: this process is not a kill target, and the heartbeat covers it.
            log.info("launcher.deploy_reused", job_id=run.job_id, exit_code=earlier[0])
            return self._finalize(run, order, earlier[0], "", earlier[1])
        worktree = self._prepare_worktree(order)
        self._clear_previous_verdict(order, worktree)
        run_dir = Path(run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / DEPLOY_MARKER).write_text(json.dumps(run.deploy_command))
        exit_file = run_dir / "exit_code"
        env = policy.agent_env(
            os.environ,
            order,
            repo=self._cfg.repo(order.repo),
            worktree=str(worktree),
            python=sys.executable,
            extra={},
        )
        argv = policy.wrap(run.deploy_command, exit_file=str(exit_file), python=sys.executable)
        proc, create_time = spawn(
            argv, cwd=worktree, stdin=subprocess.DEVNULL, log_path=run.log_path, env=env
        )
        self._procs[run.id] = proc.pid
        # Stored before going on: a restart adopts the deploy by this pid, never reruns it.
        self._ask(RunStarted(run_id=run.id, pid=proc.pid, create_time=create_time))
        log.info("launcher.deploy_started", job_id=run.job_id, pid=proc.pid, stage=order.stage)
        faults.point("launcher.deploy_started")
        timeout_s = self._cfg.deploy.timeout_s
        if not procs.wait_exit(proc.pid, timeout_s):
            log.warning("launcher.deploy_timed_out", job_id=run.job_id, timeout_s=timeout_s)
            kill_tree(proc.pid, self._cfg.launcher.kill_grace_s)
            proc.wait()
            if order.job_id in self._cancelled:
                return RunDone(run_id=run.id, exit_code=None, error="killed: job cancelled")
            why = f"timed out after {timeout_s:g}s; process tree killed"
            return self._finalize(run, order, None, why, Path(run.log_path))
        proc.wait()
        recorded = runwrap.read_exit_file(exit_file)
        exit_code = recorded[0] if recorded else proc.returncode
        if order.job_id in self._cancelled:
            return RunDone(run_id=run.id, exit_code=exit_code, error="killed: job cancelled")
        return self._finalize(run, order, exit_code, "", Path(run.log_path))

    def _finalize(
        self, run: Run, order: LaunchOrder, exit_code: int | None, detail: str, output: Path
    ) -> RunDone:
        """Turn the deploy's exit code and health check into the verdict file, then commit it.

        The verdict overwrites whatever an agent or an earlier incarnation wrote: it
        is proven here, never claimed. The job itself succeeds once the verdict is on
        the branch, FAILED or not, so the queue never retries (redeploys) it; the gate
        reads the verdict and decides.
        """
        if self._abandoned.is_set():
            raise Abandoned(run.id)
        repo = self._cfg.repo(order.repo)
        health_ok: bool | None = None
        health = "not configured"
        if exit_code == 0 and repo.health_url:
            health_ok, health = check_health(
                repo.health_url,
                timeout_s=self._cfg.deploy.health_timeout_s,
                interval_s=self._cfg.deploy.health_interval_s,
                clock=self._clock,
                stop=self._abandoned,
            )
            detail = health
        elif repo.health_url:
            health = "not checked (the command failed)"
        status, reason = policy.verdict(exit_code, health_ok, detail=detail)
        relative, text = policy.deploy_log(
            order.stage,
            policy.DeployFacts(
                work_item=order.task_id,
                job_id=run.job_id,
                timestamp=iso(self._clock.now()),
                command=run.deploy_command,
                exit_code=exit_code,
                health_url=repo.health_url,
                health=health,
                status=status,
                reason=reason,
                output=_tail(output),
            ),
        )
        target = self._layout.worktree(order.repo, order.task_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        log.info(
            "launcher.deploy_verdict",
            job_id=run.job_id,
            stage=order.stage,
            status=status,
            reason=reason,
            exit_code=exit_code,
        )
        faults.point("launcher.deploy_verdict")
        done = self._post_steps(run, order, 0)
        facts = {"exit_code": exit_code, "status": status, "reason": reason}
        return msgspec.structs.replace(done, usage={**done.usage, "deploy": facts})

    def _post_steps(self, run: Run, order: LaunchOrder, exit_code: int) -> RunDone:
        """Commit, push, open the pull request, let the forge run CI; all idempotent."""
        if self._abandoned.is_set():
            raise Abandoned(run.id)
        with self._transition(order, wait=True) as fence:
            return self._post_steps_fenced(run, order, exit_code, fence)

    def _post_steps_fenced(
        self, run: Run, order: LaunchOrder, exit_code: int, fence: TransitionFence
    ) -> RunDone:
        worktree = self._layout.worktree(order.repo, order.task_id)
        usage = policy.parse_usage(_tail(Path(run.log_path)))
        fence.check("push")
        with self._repo_lock(order.repo):
            git.commit_all(
                worktree,
                f"{order.role}: {order.task_id} {order.stage} "
                f"(visit {order.visit}, attempt {order.attempt})",
            )
            faults.point("launcher.committed")
            sha = git.push_branch(worktree, order.branch)
        faults.point("launcher.pushed")
        # A rework after a merge gets its new pull request from the merge step.
        if self._forge.find_pull(order.repo, order.branch) is None:
            fence.check("pull request")
            body = f"Work item {order.task_id}, delivered by Conveyor."
            self._ensure_pull(order, sha, body, after_merge=False)
            faults.point("launcher.pr_opened")
        status = self._forge.commit_status(order.repo, sha)
        # A pending status is a check that died with an earlier incarnation: run it again.
        if status is None or status.state == "pending":
            self._forge.on_push(order.repo, order.branch, sha)
            faults.point("launcher.checked")
        return RunDone(run_id=run.id, exit_code=exit_code, head_sha=sha, usage=usage)

    def _status(self) -> dict[str, Any]:
        active = [r.value for r in self._runs.values() if r.value.status != policy.FINISHED]
        return {
            "healthy": True,
            "name": self._name,
            "host": self._host,
            "slots": self._slots.total,
            "busy": self._slots.used,
            "running": [
                {
                    "job_id": r.job_id,
                    "attempt": r.attempt,
                    "pid": r.pid,
                    "role": r.role,
                    "log_path": r.log_path,
                }
                for r in active
            ],
            "started_at": self._started_at,
        }


def _wrapper_pid(run: Run, exit_file: Path) -> int | None:
    """The live wrapper of `run`: by recorded pid and start time, else by its unique argv.

    A launcher that died between spawning the wrapper and recording its pid left a
    run in `starting`; its wrapper is found by the exit-file path on its command line.
    """
    if run.pid is not None:
        return run.pid if procs.alive(run.pid, run.create_time) else None
    marker = str(exit_file)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "conveyor.runwrap" in cmdline and marker in cmdline:
            return int(proc.info["pid"])
    return None
