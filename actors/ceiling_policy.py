"""Spending ceilings of running jobs: kill a run the moment its running totals cross one.

The launchers' heartbeats carry each live run's running totals; one lookup of the job
and of its repository's daily total decides. Pure: no I/O, clock or logs.
"""

from __future__ import annotations

import msgspec

from actors import usage_policy
from actors.queue_policy import RUNNING, Decision, Job, job_usage
from actors.usage_policy import ZERO, Ceilings, Ledger, Usage
from bus.messages import KillJob, RunHeartbeat


def on_heartbeat(
    job: Job, beat: RunHeartbeat, ledger: Ledger, ceilings: Ceilings, *, now: float
) -> Decision:
    """Kill the job (once) when its running usage crosses a task or repository ceiling.

    The task's total is what it spent before this job (`JobRequested`), the job's
    earlier attempts and this attempt's running totals; the repository's is what the
    ledger holds for today (finished runs) plus this attempt's running totals.
    """
    if job.status != RUNNING or beat.attempt != job.attempts:
        return Decision(reason="heartbeat of an attempt no longer running; ignored")
    if job.ceiling:
        return Decision(reason="already killed for a ceiling")
    live = usage_policy.reported(beat.usage)
    if live == ZERO:
        return Decision(reason="no usage reported yet")
    # The task's earlier spending is known as one token sum; counted as input, it adds up.
    before = Usage(input_tokens=job.task_spent_tokens, cost_usd=job.task_spent_usd)
    today = usage_policy.rolled(ledger, now).today_by_repo.get(job.repo, ZERO)
    why = usage_policy.crossed(
        ceilings, task=before + job_usage(job) + live, repo=job.repo, repo_today=today + live
    )
    if not why:
        return Decision(reason="within the ceilings")
    killed = msgspec.structs.replace(job, ceiling=why, ceiling_usage=live)
    kill = KillJob(job_id=job.id, reason=f"over a spending ceiling: {why}")
    return Decision(jobs=(killed,), emit=(kill,), reason=f"killed: {why}")
