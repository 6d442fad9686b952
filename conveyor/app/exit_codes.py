"""Exit codes of the `conveyor` command, one per kind of outcome a script can act on.

- 0: success.
- 1: refused: Conveyor answered and said no (a command in the wrong stage, a held
  lease); also an operation that ran and failed (`conveyor run` short of `done`).
- 2: usage error: an unknown option, a missing or malformed argument (click's code).
- 69: cannot reach Conveyor: no NATS server answered, or no Conveyor process
  answered on it (`EX_UNAVAILABLE` of sysexits.h).
- 78: configuration error: the config file, a secret file or the environment
  cannot be used (`EX_CONFIG`); the service units do not restart on it.

Refused keeps 1, the code it always had, so existing scripts keep working; the
new codes follow sysexits.h, which service managers and shells already know.
"""

from __future__ import annotations

import click

OK = 0
REFUSED = 1
USAGE = 2
UNREACHABLE = 69
CONFIG = 78


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
