"""Exit codes of the `conveyor` command, one per kind of outcome a script can act on.

| Code | Meaning |
|------|---------|
| 0 | Success. |
| 1 | The operation ran and failed (e.g. `conveyor run` ended escalated), or an unexpected error. |
| 2 | Usage error: unknown option, missing argument (click's own code). |
| 3 | Cannot reach Conveyor: no NATS server answered, or no Conveyor process answered on it. |
| 4 | Refused: Conveyor answered and said no (a command in the wrong stage, a held lease). |
| 5 | Configuration error: the config file or environment cannot be used. |
"""

from __future__ import annotations

import click

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
REFUSED = 4
CONFIG = 5


class Unreachable(click.ClickException):
    """No NATS server or no Conveyor process answered."""

    exit_code = UNREACHABLE

    def __init__(self, reason: object) -> None:
        super().__init__(f"Conveyor is not reachable: {reason}")


class ConfigProblem(click.ClickException):
    """The configuration cannot be used."""

    exit_code = CONFIG

    def __init__(self, reason: object) -> None:
        super().__init__(f"configuration error: {reason}")
