"""Directives in the prompt that steer the demo agent: `demo: developer=fail*1 ...`.

The prompt is work-item text, so a bad directive is ignored with a warning, never
fatal; see `parse_directives`.
"""

from __future__ import annotations

import re

from conveyor.pipeline import AGENT_ROLES, ROLE_REVIEWER

Directive = tuple[str, int | None]
"""A role's scripted behaviour and the last visit it applies to (None: every visit)."""

BEHAVIOURS = frozenset({"ok", "fail", "request_changes", "crash", "hang", "die"})
"""Directive behaviours besides `slow:<seconds>`."""

_DIRECTIVE_LINE = re.compile(r"[ \t]*demo:(.*)")
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)
_SECONDS = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?", re.ASCII)
_MAX_TOKEN_ECHO = 60


def parse_with_warnings(text: str) -> tuple[dict[str, Directive], list[str]]:
    """Return the directives found in `text` and a warning per ignored token."""
    found: dict[str, Directive] = {}
    warnings: list[str] = []
    for line in text.splitlines():
        match = _DIRECTIVE_LINE.fullmatch(line)
        if match is None:
            continue
        for token in match.group(1).split():
            parsed = _parse_token(token)
            if isinstance(parsed, str):
                warnings.append(f"ignoring demo directive {_echo(token)}: {parsed}")
            else:
                role, directive = parsed
                found[role] = directive
    return found, warnings


def _parse_token(token: str) -> tuple[str, Directive] | str:
    """Parse `role=behaviour[*N|*always]`; a string return is why it was refused."""
    role, eq, rest = token.partition("=")
    if not eq:
        return "expected role=behaviour"
    if role not in AGENT_ROLES:
        return "unknown role"
    behaviour, star, count_text = rest.partition("*")
    count: int | None = 1
    if star:
        if count_text == "always":
            count = None
        elif _COUNT.fullmatch(count_text):
            count = int(count_text)
        else:
            return "count must be a number or 'always'"
    if behaviour.startswith("slow:"):
        if not _SECONDS.fullmatch(behaviour.removeprefix("slow:")):
            return "slow needs seconds, e.g. slow:2 or slow:0.5"
    elif behaviour not in BEHAVIOURS:
        return "unknown behaviour"
    elif behaviour == "request_changes" and role != ROLE_REVIEWER:
        return "request_changes applies to the reviewer only"
    return role, (behaviour, count)


def parse_directives(text: str) -> dict[str, Directive]:
    """Return role -> (behaviour, N or None for always) from the `demo:` lines of `text`.

    A directive line starts (after spaces) with `demo:` followed by
    whitespace-separated `role=behaviour[*N]` tokens. N defaults to 1, `*0`
    never applies and `*always` applies on every visit. A later token for the
    same role wins. Unknown roles, behaviours and malformed tokens are dropped.
    """
    return parse_with_warnings(text)[0]


def applies(directive: Directive, visit: int) -> bool:
    """Whether `directive` steers the run on 1-based `visit` of the stage."""
    _, last_visit = directive
    return last_visit is None or visit <= last_visit


def _echo(token: str) -> str:
    shown = token if len(token) <= _MAX_TOKEN_ECHO else token[:_MAX_TOKEN_ECHO] + "..."
    return ascii(shown)
