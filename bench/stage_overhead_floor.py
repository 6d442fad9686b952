"""The floor of the stage-overhead bench: Conveyor's work for one item, in a plain loop.

The same `gateways` code, agent spawns and gate reads the Launcher, forge and
StageEngine do, with no NATS and no actors.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from actors import launcher_policy
from actors.gate_policy import GATE_FILES, GateInputs, evaluate_gate
from actors.task_policy import Task, job_id_for
from bus.messages import LaunchOrder
from conveyor import config as config_mod
from conveyor import runwrap, validate
from conveyor.agents import demo_repo as demo
from conveyor.config import python_argv
from conveyor.layout import Layout
from conveyor.pipeline import (
    ADR_DIR,
    GATE_ARCHITECTURE,
    GATE_BRANCH_EXISTS,
    GATE_CI_GREEN,
    GATE_PR_MERGED,
    STEP_INTAKE,
    STEP_WORK,
    artifact_path,
)
from gateways import git
from gateways.local_forge import LocalForge

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_overhead_probe import REPO, TITLE, RunResult, add_stage_times, stage_names


class FloorSide:
    """The same git operations, forge calls and agent spawns, in one plain sequential loop."""

    def __init__(
        self, data_dir: Path, *, repo: str = REPO, overrides: dict[str, Any] | None = None
    ) -> None:
        self.repo = repo
        self.cfg = config_mod.load(
            env={}, overrides={"data_dir": str(data_dir), **(overrides or {})}
        )
        self.layout = Layout(self.cfg.data_path)
        self.repo_cfg = self.cfg.repo(repo)
        checks = {r.name: python_argv(r.check_command) for r in self.cfg.repos if r.check_command}
        self.forge = LocalForge(
            self.layout.forge, checks, check_timeout_s=self.cfg.forge.check_timeout_s
        )
        self.next_number = 1

    def start(self) -> None:
        # As the Node does at start-up (not timed on either side).
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.forge.create_repo(self.repo, initial_files=demo.create_demo_files())

    def run(self, items: int) -> RunResult:
        names = stage_names(self.cfg)
        result = RunResult(seconds=0.0)
        for _ in range(items):
            task_id = f"{self.repo_cfg.prefix}-{self.next_number}"
            self.next_number += 1
            started = time.perf_counter()
            marks = self._one(task_id)
            result.seconds += time.perf_counter() - started
            add_stage_times(result, names, [started, *marks])
        return result

    def _one(self, task_id: str) -> list[float]:
        """Deliver one item; return the time each stage's gate passed."""
        branch = validate.branch_for(task_id, TITLE)
        task = Task(id=task_id, repo=self.repo, title=TITLE, branch=branch, step=STEP_INTAKE)
        marks: list[float] = []
        # created: the built-in intake job, then the branch_exists gate.
        worktree = self._prepare_worktree(task_id, branch)
        with self._locked():
            git.push_branch(worktree, branch)
        self._gate(task, GATE_BRANCH_EXISTS)
        marks.append(time.perf_counter())
        for stage in self.cfg.pipeline.stages:
            task = Task(
                id=task_id,
                repo=self.repo,
                title=TITLE,
                branch=branch,
                stage=stage.name,
                step=STEP_WORK,
            )
            self._agent(task, stage.name, stage.role, step=STEP_WORK)
            if stage.human_approval:
                # Conveyor reads the gate, waits for the approval, then reads it again.
                self._gate(task, stage.gate)
                task = Task(
                    id=task_id,
                    repo=self.repo,
                    title=TITLE,
                    branch=branch,
                    stage=stage.name,
                    step=STEP_WORK,
                    approved=True,
                )
            self._gate(task, stage.gate)
            if stage.merge:
                self._merge(task_id, branch)
                self._gate(task, GATE_PR_MERGED)
            marks.append(time.perf_counter())
        return marks

    def _locked(self) -> AbstractContextManager[object]:
        """The repository's workspace lock; none here: this side's clone has one user."""
        return contextlib.nullcontext()

    def _prepare_worktree(self, task_id: str, branch: str) -> Path:
        with self._locked():
            return self._prepare_worktree_locked(task_id, branch)

    def _prepare_worktree_locked(self, task_id: str, branch: str) -> Path:
        worktree = self.layout.worktree(self.repo, task_id)
        git.ensure_clone(self.forge.clone_url(self.repo), self.layout.workspace(self.repo))
        git.ensure_worktree(self.layout.workspace(self.repo), worktree, branch)
        return worktree

    def _agent(self, task: Task, stage: str, role: str, *, step: str) -> None:
        order = LaunchOrder(
            job_id=job_id_for(task.id, stage, 1, step),
            attempt=1,
            task_id=task.id,
            repo=self.repo,
            stage=stage,
            role=role,
            visit=1,
            branch=task.branch,
            title=TITLE,
            description="",
        )
        worktree = self._prepare_worktree(task.id, task.branch)
        run_dir = self.layout.run_dir(order.job_id, order.attempt)
        run_dir.mkdir(parents=True, exist_ok=True)
        prompt_path = run_dir / "prompt.md"
        prompt_path.write_text(launcher_policy.prompt(order))
        exit_file = run_dir / "exit_code"
        agent = self.cfg.agents.for_role(role)
        env = launcher_policy.agent_env(
            os.environ,
            order,
            repo=self.repo_cfg,
            gate=launcher_policy.stage_gate(self.cfg, stage),
            worktree=str(worktree),
            python=sys.executable,
            extra=agent.env,
        )
        argv = launcher_policy.wrapped_argv(
            agent.command,
            order,
            exit_file=str(exit_file),
            worktree=str(worktree),
            python=sys.executable,
        )
        with prompt_path.open("rb") as stdin, (run_dir / "output.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=worktree,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc.wait()
        recorded = runwrap.read_exit_file(exit_file)
        code = recorded[0] if recorded else proc.returncode
        if code != 0:
            raise RuntimeError(f"floor: {role} on {stage} exited {code} (see {run_dir})")
        self.post_steps(task, stage, role, worktree)

    def post_steps(self, task: Task, stage: str, role: str, worktree: Path) -> None:
        """The Launcher's post-steps: commit, push, pull request, CI."""
        with self._locked():
            git.commit_all(worktree, f"{role}: {task.id} {stage} (visit 1, attempt 1)")
            sha = git.push_branch(worktree, task.branch)
        if self.forge.find_pull(self.repo, task.branch) is None:
            self.forge.open_pull(
                self.repo, task.branch, f"{task.id}: {TITLE}", f"Work item {task.id}, delivered."
            )
        if self.forge.commit_status(self.repo, sha) is None:
            self.forge.on_push(self.repo, task.branch, sha)

    def _merge(self, task_id: str, branch: str) -> None:
        """The built-in merge job of a `merge = true` stage."""
        head = self.forge.branch_head(self.repo, branch)
        if head is None:
            raise RuntimeError(f"floor: branch {branch} missing before merge")
        pull = self.forge.find_pull(self.repo, branch)
        if pull is None:
            pull = self.forge.open_pull(
                self.repo, branch, f"{task_id}: {TITLE}", "Opened before merge."
            )
        if not pull.merged:
            self.forge.merge_pull(self.repo, pull.number, expected_head_sha=head)

    def _gate(self, task: Task, gate: str, expect: str = "pass") -> None:
        """Read what the gate reads from the forge at the branch head, and decide it."""
        forge = self.forge
        head = forge.branch_head(self.repo, task.branch)
        files: dict[str, str | None] = {}
        adr_files: dict[str, str] = {}
        ci_state = None
        pr_merged = None
        if gate != GATE_BRANCH_EXISTS and head is not None:
            for name in GATE_FILES.get(gate, ()):
                path = artifact_path(task.id, name)
                data = forge.read_file(self.repo, head, path)
                files[path] = None if data is None else data.decode("utf-8", "replace")
            if gate == GATE_ARCHITECTURE:
                adr_dir = artifact_path(task.id, ADR_DIR)
                for name in sorted(forge.list_dir(self.repo, head, adr_dir)):
                    if name.endswith(".md"):
                        data = forge.read_file(self.repo, head, f"{adr_dir}/{name}")
                        if data is not None:
                            adr_files[name] = data.decode("utf-8", "replace")
            if gate == GATE_CI_GREEN:
                status = forge.commit_status(self.repo, head)
                ci_state = status.state if status else None
            if gate == GATE_PR_MERGED:
                pull = forge.find_pull(self.repo, task.branch)
                pr_merged = bool(pull and pull.merged)
        inputs = GateInputs(
            files=files,
            adr_files=adr_files,
            branch_head=head,
            ci_state=ci_state,
            pr_merged=pr_merged,
        )
        verdict = evaluate_gate(gate, task, inputs)
        if verdict.verdict != expect:
            raise RuntimeError(f"floor: gate {gate} said {verdict.verdict}: {verdict.reason}")
