"""The cost ledger: tokens and USD per run, task, repository and role, and daily ceilings.

Totals grow by one addition per finished run (never a scan of every task or job),
and the day rolls over by the UTC date of the `now` the caller passes in.
Pure: no I/O, clock or logs.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from conveyor.config import QueueConfig


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and USD an agent reported (or several runs' sum)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """Tokens sent and received (cached input is part of the input already)."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


ZERO = Usage()


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if 0 <= value < 1e12 else 0


def _usd(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if 0 <= value < 1e6 else 0.0


def reported(usage: Mapping[str, object]) -> Usage:
    """The usage one run reported (`JobFinished.usage`); anything but a sane number is 0."""
    return Usage(
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=_count(usage.get("output_tokens")),
        cached_tokens=_count(usage.get("cached_tokens")),
        cost_usd=_usd(usage.get("cost_usd")),
    )


def day_of(now: float) -> str:
    """The UTC date of `now` as YYYY-MM-DD (the ledger's day; computed, no clock read)."""
    # Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
    days = int(now // 86400) + 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}-{month:02d}-{day:02d}"


def spent(usage: Usage) -> str:
    """Usage for people: "$0.0123, 2,345 tokens"."""
    return f"${usage.cost_usd:.4f}, {usage.tokens:,} tokens"


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """Running totals per repository and per role, overall and for the current UTC day."""

    day: str = ""
    by_repo: dict[str, Usage] = msgspec.field(default_factory=dict)
    by_role: dict[str, Usage] = msgspec.field(default_factory=dict)
    today_by_repo: dict[str, Usage] = msgspec.field(default_factory=dict)
    today_by_role: dict[str, Usage] = msgspec.field(default_factory=dict)
    alerted: frozenset[str] = frozenset()
    """Repositories already alerted about today's ceiling."""


def rolled(ledger: Ledger, now: float) -> Ledger:
    """The ledger on the UTC day of `now`: a new day starts with empty daily totals."""
    day = day_of(now)
    if day == ledger.day:
        return ledger
    return msgspec.structs.replace(
        ledger, day=day, today_by_repo={}, today_by_role={}, alerted=frozenset()
    )


def record(
    ledger: Ledger, repo: str, role: str, usage: Usage, *, now: float, day: str = ""
) -> Ledger:
    """The ledger with one run's usage added (on `day`, default the UTC day of `now`)."""
    ledger = rolled(ledger, now)
    if usage == ZERO:
        return ledger
    today = (day or ledger.day) == ledger.day
    return msgspec.structs.replace(
        ledger,
        by_repo={**ledger.by_repo, repo: ledger.by_repo.get(repo, ZERO) + usage},
        by_role={**ledger.by_role, role: ledger.by_role.get(role, ZERO) + usage},
        today_by_repo=_plus(ledger.today_by_repo, repo, usage) if today else ledger.today_by_repo,
        today_by_role=_plus(ledger.today_by_role, role, usage) if today else ledger.today_by_role,
    )


def _plus(totals: dict[str, Usage], key: str, usage: Usage) -> dict[str, Usage]:
    return {**totals, key: totals.get(key, ZERO) + usage}


def over_daily(ledger: Ledger, repo: str, cfg: QueueConfig) -> str:
    """Why `repo` may start no run today (its daily ceiling is reached), or ""."""
    today = ledger.today_by_repo.get(repo, ZERO)
    usd, tokens = cfg.max_repo_usd_per_day, cfg.max_repo_tokens_per_day
    if usd > 0 and today.cost_usd >= usd:
        return (
            f"repository {repo} spent ${today.cost_usd:.4f} today "
            f"(queue.max_repo_usd_per_day ${usd:g}); held until the next UTC day"
        )
    if tokens > 0 and today.tokens >= tokens:
        return (
            f"repository {repo} used {today.tokens:,} tokens today "
            f"(queue.max_repo_tokens_per_day {tokens:,}); held until the next UTC day"
        )
    return ""


class Ceilings(msgspec.Struct, frozen=True, kw_only=True):
    """The spending ceilings a running job is held to (0: none)."""

    task_usd: float = 0.0
    """`pipeline.max_task_cost_usd`."""
    task_tokens: int = 0
    """`pipeline.max_task_tokens`."""
    repo_usd_per_day: float = 0.0
    """`queue.max_repo_usd_per_day`."""
    repo_tokens_per_day: int = 0
    """`queue.max_repo_tokens_per_day`."""

    @property
    def any(self) -> bool:
        """Whether any ceiling is set."""
        return bool(
            self.task_usd > 0
            or self.task_tokens > 0
            or self.repo_usd_per_day > 0
            or self.repo_tokens_per_day > 0
        )


def crossed(ceilings: Ceilings, *, task: Usage, repo: str, repo_today: Usage) -> str:
    """Which ceiling a running job crosses, naming it, or "".

    `task` is what the task spent with the running attempt's totals included;
    `repo_today` is what the repository spent today with them included.
    """
    if ceilings.task_usd > 0 and task.cost_usd >= ceilings.task_usd:
        return (
            f"the task spent ${task.cost_usd:.4f} "
            f"(pipeline.max_task_cost_usd ${ceilings.task_usd:g})"
        )
    if ceilings.task_tokens > 0 and task.tokens >= ceilings.task_tokens:
        return (
            f"the task used {task.tokens:,} tokens "
            f"(pipeline.max_task_tokens {ceilings.task_tokens:,})"
        )
    usd, tokens = ceilings.repo_usd_per_day, ceilings.repo_tokens_per_day
    if usd > 0 and repo_today.cost_usd >= usd:
        return (
            f"repository {repo} spent ${repo_today.cost_usd:.4f} today "
            f"(queue.max_repo_usd_per_day ${usd:g})"
        )
    if tokens > 0 and repo_today.tokens >= tokens:
        return (
            f"repository {repo} used {repo_today.tokens:,} tokens today "
            f"(queue.max_repo_tokens_per_day {tokens:,})"
        )
    return ""


def as_usage_dict(usage: Usage) -> dict[str, object]:
    """Usage as a run reports it (`JobFinished.usage`, `RunHeartbeat.usage`)."""
    out: dict[str, object] = msgspec.to_builtins(usage)
    return out


def as_dict(usage: Usage) -> dict[str, object]:
    """Usage as a status answer carries it, with the token sum."""
    out: dict[str, object] = msgspec.to_builtins(usage)
    out["tokens"] = usage.tokens
    return out


def summary(ledger: Ledger) -> dict[str, object]:
    """The ledger as `conveyor.status.usage` answers it."""

    def table(totals: dict[str, Usage]) -> dict[str, object]:
        return {key: as_dict(value) for key, value in sorted(totals.items())}

    return {
        "day": ledger.day,
        "by_repo": table(ledger.by_repo),
        "by_role": table(ledger.by_role),
        "today": {"by_repo": table(ledger.today_by_repo), "by_role": table(ledger.today_by_role)},
    }


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    """Tasks that reached `done` and what their agents spent (cost per delivered item)."""

    count: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)

    def with_task(self, usage: Usage) -> Delivered:
        """One more delivered task."""
        return Delivered(count=self.count + 1, usage=self.usage + usage)

    def as_dict(self) -> dict[str, object]:
        """As `conveyor.status.usage` answers it."""
        per = self.usage.cost_usd / self.count if self.count else 0.0
        tokens = self.usage.tokens // self.count if self.count else 0
        return {
            "count": self.count,
            "cost_usd": self.usage.cost_usd,
            "tokens": self.usage.tokens,
            "cost_per_item_usd": per,
            "tokens_per_item": tokens,
        }
