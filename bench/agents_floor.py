"""The floor of `bench/agents.py`: what Conveyor must do around one CLI run, without Conveyor.

Per agent stage, in a plain sequential script with the same `gateways` code as the
Launcher: the task's worktree (fetch, worktree on the branch), the prompt file, the
adapter's plan for the CLI (argv, environment, files: the same `AgentRequest` the
Launcher builds), the CLI spawned bare (no exit-code wrapper, no live parsing) with the
prompt on stdin as the Launcher feeds it, then the Launcher's post-steps (commit all,
push to the local forge's bare repository, pull request, the forge's CI check) and the
stage gate's forge reads. The demo-agent floor (`stage_overhead_floor.py`) supplies
the worktree, post-steps and gate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from actors import launcher_policy
from actors.task_policy import Task, job_id_for
from bus.messages import LaunchOrder
from conveyor import config as config_mod
from conveyor import validate
from conveyor.pipeline import STEP_WORK
from gateways import git
from gateways.agents.base import AgentRequest
from gateways.agents.registry import adapter_for

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_overhead_floor import FloorSide
from stage_overhead_probe import REPO

SPAWN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FloorStage:
    """One agent stage done by the floor: its whole time and its parts (seconds)."""

    total_s: float = 0.0
    prep_s: float = 0.0
    """The worktree, the prompt file, the adapter's plan and files: up to the spawn."""
    cli_s: float = 0.0
    """Spawn to exit of the bare CLI: a bare run of the same CLI."""
    post_s: float = 0.0
    """Commit, push, pull request, the forge's CI check."""
    gate_s: float = 0.0
    """The stage gate's forge reads."""
    output: str = ""


class CliFloor(FloorSide):
    """The demo-agent floor with the bench's configuration: the real CLI on every role."""

    def __init__(self, cfg: config_mod.Config, *, wrapped: bool = False) -> None:
        super().__init__(cfg.data_path)
        self.wrapped = wrapped
        """Spawn the CLI behind Conveyor's exit-code wrapper too (to price the wrapper)."""
        # Same demo repository and check command as the default the forge was built from.
        self.cfg = cfg
        self.repo_cfg = cfg.repo(REPO)

    def begin(self, task_id: str, title: str) -> None:
        """The item's branch on the forge, as Conveyor's intake leaves it (not timed)."""
        branch = validate.branch_for(task_id, title)
        git.push_branch(self._prepare_worktree(task_id, branch), branch)

    def worktree(self, task_id: str) -> Path:
        return self.layout.worktree(REPO, task_id)

    def stage(self, task_id: str, title: str, stage: str, prompt: str) -> FloorStage:
        """One agent stage with `prompt` (the text Conveyor gave the CLI), timed whole."""
        spec = next(s for s in self.cfg.pipeline.stages if s.name == stage)
        branch = validate.branch_for(task_id, title)
        task = Task(
            id=task_id,
            repo=REPO,
            title=title,
            branch=branch,
            stage=stage,
            step=STEP_WORK,
            approved=spec.human_approval,
        )
        started = time.perf_counter()
        worktree = self._prepare_worktree(task_id, branch)
        spawned, exited, output = self._spawn(task, spec.role, worktree, prompt)
        self.post_steps(task, stage, spec.role, worktree)
        read = time.perf_counter()
        self._gate(task, spec.gate)
        ended = time.perf_counter()
        return FloorStage(
            total_s=ended - started,
            prep_s=spawned - started,
            cli_s=exited - spawned,
            post_s=read - exited,
            gate_s=ended - read,
            output=output,
        )

    def _spawn(
        self, task: Task, role: str, worktree: Path, prompt: str
    ) -> tuple[float, float, str]:
        """The bare CLI run: when it was spawned, when it exited, its output."""
        order = LaunchOrder(
            job_id=job_id_for(task.id, task.stage, 1, STEP_WORK),
            attempt=1,
            task_id=task.id,
            repo=REPO,
            stage=task.stage,
            role=role,
            visit=1,
            branch=task.branch,
            title=task.title,
            description="",
        )
        run_dir = self.layout.run_dir(order.job_id, order.attempt)
        run_dir.mkdir(parents=True, exist_ok=True)
        prompt_path = run_dir / "prompt.md"
        prompt_path.write_text(prompt)
        agent = self.cfg.agents.for_role(role)
        env = launcher_policy.agent_env(
            os.environ,
            order,
            repo=self.repo_cfg,
            gate=launcher_policy.stage_gate(self.cfg, task.stage),
            worktree=str(worktree),
            python=sys.executable,
            extra=agent.env,
        )
        request = AgentRequest(
            **({"stall_s": agent.stall_s} if agent.stall_s > 0 else {}),
            binary=agent.binary or agent.cli,
            prompt=prompt,
            workdir=worktree,
            run_dir=run_dir,
            env=env,
            model=agent.model or None,
            extra_args=tuple(agent.args),
            base_url=agent.base_url or None,
            api_key=os.environ.get(agent.api_key_env) if agent.api_key_env else None,
            as_root=os.geteuid() == 0,
            max_retries=agent.max_retries,
            request_timeout_s=agent.request_timeout_s,
        )
        launch = adapter_for(agent.cli).plan(request)
        launch.materialize()
        stdin_path = prompt_path
        if launch.stdin is not None:
            stdin_path = run_dir / "stdin.txt"
            stdin_path.write_text(launch.stdin, encoding="utf-8")
        log_path = run_dir / "output.log"
        argv = list(launch.argv)
        if self.wrapped:
            exit_file = str(run_dir / "exit_code")
            argv = launcher_policy.wrap(argv, exit_file=exit_file, python=sys.executable)
        with stdin_path.open("rb") as stdin, log_path.open("wb") as out:
            started = time.perf_counter()
            done = subprocess.run(
                argv,
                cwd=worktree,
                env=launch.env,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=SPAWN_TIMEOUT_S,
                check=False,
            )
            exited = time.perf_counter()
        if done.returncode != 0:
            raise RuntimeError(
                f"floor: {role} on {task.stage} exited {done.returncode} ({run_dir})"
            )
        return started, exited, log_path.read_text(errors="replace")
