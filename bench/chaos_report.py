"""The chaos bench's report: kills, recoveries and effects measured, rendered as text."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

AGENT_TARGET_S = 3.0
"""SPEC §8: agent killed -> its job resolved (retried or failed) within 3 s."""
RESTART_TARGET_S = 5.0
"""SPEC §8: daemon killed and restarted -> in-flight tasks moving again within 5 s."""

VICTIMS = ("control", "launcher", "nats-server", "agent")


@dataclass
class Kill:
    """One SIGKILL the chaos thread sent, and what became of it."""

    at_s: float
    wall: float
    victim: str
    pid: int
    detail: str = ""
    restart_wall: float | None = None
    restart_s: float | None = None
    job_id: str = ""
    attempt: int = 0
    resolved_s: float | None = None
    disturbed: bool = False


@dataclass
class Sample:
    """One recovery measurement."""

    seconds: float
    disturbed: bool


@dataclass
class Report:
    """Everything a chaos run measured."""

    items: int
    repos: int
    kill_min_s: float
    kill_max_s: float
    deadline_s: float
    seed: int
    agent_s: float
    workdir: str = ""
    elapsed_s: float = 0.0
    timed_out: bool = False
    done: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    escalated: dict[str, str] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)
    duplicated: Counter[str] = field(default_factory=Counter)
    duplicate_details: list[str] = field(default_factory=list)
    duplicated_comments: int = 0
    comment_details: list[str] = field(default_factory=list)
    extra_runs: dict[str, int] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    agent_recovery: list[Sample] = field(default_factory=list)
    agent_unresolved: list[str] = field(default_factory=list)
    control_recovery: list[Sample] = field(default_factory=list)
    control_unmeasured: int = 0
    nats_recovery: list[Sample] = field(default_factory=list)
    nats_unmeasured: int = 0

    @property
    def duplicated_effects(self) -> int:
        """Duplicated forge effects of every kind, summed."""
        return sum(self.duplicated.values())

    def render(self) -> str:
        """The report as text, figures next to their targets."""
        out: list[str] = []
        kills = Counter(k.victim for k in self.kills)
        out.append(
            f"Chaos bench: {self.items} items, {self.repos} repositories, kill -9 every "
            f"{self.kill_min_s:g}-{self.kill_max_s:g} s, seed {self.seed}, agents "
            f"{self.agent_s:g} s/job, deadline {self.deadline_s:g} s"
        )
        state = "deadline reached" if self.timed_out else "every item settled"
        out.append(f"Elapsed {self.elapsed_s:.1f} s ({state}); scratch {self.workdir}")
        out.append(
            f"Kills: {len(self.kills)} ("
            + ", ".join(f"{v} {kills.get(v, 0)}" for v in VICTIMS)
            + f"); processes that exited by themselves: {len(self.exits)}"
        )
        for kill in self.kills:
            extra = f" {kill.detail}" if kill.detail else ""
            if kill.restart_s is not None:
                extra += f" (restarted at {kill.restart_s:.1f} s)"
            if kill.resolved_s is not None:
                extra += f" (job left running after {kill.resolved_s:.2f} s)"
            out.append(f"  [{kill.at_s:7.1f} s] {kill.victim:<11} pid {kill.pid}{extra}")
        for line in self.exits:
            out.append(f"  exited: {line}")
        out.append("")
        out.append("Items")
        out.append(f"  done                          {len(self.done):>4} / {self.items}")
        out.append(
            f"  lost (not done, not escalated){len(self.lost):>4}   target 0   {_pf(not self.lost)}"
        )
        for item, why in sorted(self.lost.items()):
            out.append(f"    {item}: {why}")
        out.append(f"  escalated                     {len(self.escalated):>4}")
        for item, why in sorted(self.escalated.items()):
            out.append(f"    {item}: {why}")
        out.append("Side effects")
        seen = ", ".join(f"{k} {v}" for k, v in sorted(self.effects.items())) or "none"
        out.append(f"  forge effects seen: {seen}")
        dups = ", ".join(f"{k} {self.duplicated.get(k, 0)}" for k in ("pr_opened", "pr_merged"))
        out.append(f"  duplicated effects: {dups}   target 0   {_pf(self.duplicated_effects == 0)}")
        for line in self.duplicate_details:
            out.append(f"    {line}")
        out.append(
            f"  duplicated tracker comments: {self.duplicated_comments}   target 0   "
            f"{_pf(self.duplicated_comments == 0)}"
        )
        for line in self.comment_details:
            out.append(f"    {line}")
        extra = sum(self.extra_runs.values())
        out.append(f"  agent runs beyond one per job, not explained by an agent kill: {extra}")
        for job, count in sorted(self.extra_runs.items()):
            out.append(f"    {job}: {count} extra")
        out.append(f"{'Recovery':<52}{'n':>3}   median      max   target")
        out.extend(
            _recovery_rows("agent killed -> job resolved", self.agent_recovery, AGENT_TARGET_S)
        )
        if self.agent_unresolved:
            out.append(f"    not resolved by the end: {', '.join(self.agent_unresolved)}")
        out.extend(
            _recovery_rows(
                "control restarted -> tasks moving", self.control_recovery, RESTART_TARGET_S
            )
        )
        if self.control_unmeasured:
            out.append(
                f"    {self.control_unmeasured} restart(s) with no task in flight or no "
                "later stage change"
            )
        out.extend(_recovery_rows("nats restarted -> tasks moving", self.nats_recovery, None))
        if self.nats_unmeasured:
            out.append(
                f"    {self.nats_unmeasured} restart(s) with no task in flight or no "
                "later stage change"
            )
        if self.errors:
            out.append("Bench errors (the bench, not Conveyor):")
            out.extend(f"  {e}" for e in self.errors)
        return "\n".join(out)


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _recovery_rows(label: str, samples: list[Sample], target: float | None) -> list[str]:
    rows = []
    for suffix, chosen in (
        ("", samples),
        ("  (undisturbed)", [s for s in samples if not s.disturbed]),
    ):
        name = f"  {label}{suffix}"
        if not chosen:
            rows.append(f"{name:<52}{0:>3}       -       -")
            continue
        values = [s.seconds for s in chosen]
        med, top = statistics.median(values), max(values)
        goal = f"<= {target:g} s  {_pf(top <= target)}" if target is not None else "(none)"
        rows.append(f"{name:<52}{len(values):>3} {med:6.2f} s {top:6.2f} s   {goal}")
    return rows
