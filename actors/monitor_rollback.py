"""What the PostDeployMonitor runs outside its actor: the health probe and the rollback.

Both run in worker threads; the rollback runs once per task through the effect
ledger (`monitor.<task>.rollback`), so neither a redelivery nor a restart runs it
twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from actors import monitor_policy as policy
from actors.jobs.deploy_target import last_deployed
from actors.launcher_policy import python_argv, substitute, wrap
from actors.monitor_policy import Probe, Watch
from bus.effects import Ledger, effect_key
from conveyor import procs, runwrap, validate
from conveyor.config import Config
from conveyor.errors import InvalidField
from conveyor.logs import get_logger

log = get_logger(__name__)

ROLLBACK_LOG = "rollback.log"
ROLLBACK_EXIT = "rollback.exit"
INTERRUPTED = "interrupted"
"""Ledger result of a rollback that started before a crash and left no exit code."""
TIMED_OUT = "timeout"


def http_probe(url: str, timeout_s: float) -> Probe:
    """GET `url` once; a refused connection fails, any other lack of answer is uncertain."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=True) as client:
            response = client.get(url)
    except httpx.ConnectError as err:
        return policy.classify(None, f"{type(err).__name__}: {err}", refused=True)
    except httpx.HTTPError as err:
        return policy.classify(None, f"{type(err).__name__}: {err}")
    return policy.classify(response.status_code)


def task_dir(data_dir: Path, task_id: str) -> Path:
    """Where a task's post-deploy log and rollback output go."""
    return data_dir / "monitor" / validate.work_item_id(task_id)


def rollback_once(
    watch: Watch, effects: Ledger, cfg: Config, *, data_dir: Path, python: str
) -> str:
    """Run the rollback command unless the ledger says it already ran; its result."""
    where = task_dir(data_dir, watch.task_id)

    def _probe() -> str | None:
        # Started before a crash: the exit file is its verdict; a log without one means
        # it may still run (its own session) or died with us. Never a second run.
        recorded = runwrap.read_exit_file(where / ROLLBACK_EXIT)
        if recorded is not None:
            return str(recorded[0])
        return INTERRUPTED if (where / ROLLBACK_LOG).exists() else None

    return effects.once(
        effect_key("monitor", watch.task_id, "rollback"),
        lambda: _run_rollback(watch, effects, cfg, where, data_dir=data_dir, python=python),
        _probe,
    )


def _run_rollback(
    watch: Watch, effects: Ledger, cfg: Config, where: Path, *, data_dir: Path, python: str
) -> str:
    try:
        repo = cfg.repo(watch.repo)
    except InvalidField:
        repo = None
    if repo is None or not repo.rollback_command:
        log.warning("monitor.rollback_skipped", task_id=watch.task_id, repo=watch.repo)
        return "no rollback_command"
    # Production now runs the last deployed commit; the one before it is the way back.
    live, before, _ = last_deployed(effects, watch.repo)
    command = substitute(
        python_argv(repo.rollback_command, python),
        {"work_item": watch.task_id, "repo": watch.repo, "sha": live, "base_sha": before},
    )
    exit_file = where / ROLLBACK_EXIT
    argv = wrap(command, exit_file=str(exit_file), python=python)
    env = {**os.environ, "CONVEYOR_WORK_ITEM": watch.task_id, "CONVEYOR_REPO": watch.repo}
    where.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    log.warning("monitor.rolling_back", task_id=watch.task_id, repo=watch.repo, argv=command)
    timeout_s = cfg.monitor.rollback_timeout_s
    result = procs.run_wrapped(
        argv,
        exit_file=exit_file,
        cwd=data_dir,
        log_path=str(where / ROLLBACK_LOG),
        env=env,
        timeout_s=timeout_s,
        kill_grace_s=cfg.launcher.kill_grace_s,
    )
    if result.timed_out:
        log.error("monitor.rollback_timed_out", task_id=watch.task_id, timeout_s=timeout_s)
        return TIMED_OUT
    log.info("monitor.rolled_back", task_id=watch.task_id, exit_code=result.exit_code)
    return str(result.exit_code)
