"""Validation of identifiers that reach paths, branches and processes.

Work-item text is untrusted: an id, a repository name or a branch must never
escape its directory, inject a git option or carry shell metacharacters.
Everything here is pure and raises `InvalidField` naming the field.
"""

from __future__ import annotations

import re
import unicodedata

from conveyor.errors import InvalidField

WORK_ITEM_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}-[1-9][0-9]{0,8}$")
"""`PREFIX-N`: an upper-case prefix and a positive number, e.g. `DEMO-1`."""

REPO_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""Repository names: lower-case, digits, `-` and `_`; no dots, no slashes."""

PREFIX_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")
BRANCH_RE = re.compile(r"^feature/[A-Z][A-Z0-9]{0,15}-[1-9][0-9]{0,8}-[a-z0-9]+(?:-[a-z0-9]+)*$")

EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A tracker's own id for a work item (a Plane uuid): never a path or an option."""

MAX_TITLE = 200
MAX_DESCRIPTION = 20_000
MAX_SLUG = 40


def work_item_id(value: object, field: str = "id") -> str:
    """Return `value` if it is a valid work-item id."""
    if not isinstance(value, str) or not WORK_ITEM_ID_RE.fullmatch(value):
        raise InvalidField(field, "must look like PREFIX-123 (A-Z0-9 prefix, positive number)")
    return value


def external_id(value: object, field: str = "external_id") -> str:
    """Return `value` if it is a valid tracker id of a work item."""
    if not isinstance(value, str) or not EXTERNAL_ID_RE.fullmatch(value):
        raise InvalidField(field, "must be 1-64 of A-Z a-z 0-9 - _ (a tracker id such as a uuid)")
    return value


def repo_name(value: object, field: str = "repo") -> str:
    """Return `value` if it is a valid repository name."""
    if not isinstance(value, str) or not REPO_RE.fullmatch(value):
        raise InvalidField(field, "must be 1-64 of a-z 0-9 - _ starting with a letter or digit")
    return value


def prefix(value: object, field: str = "prefix") -> str:
    """Return `value` if it is a valid work-item id prefix."""
    if not isinstance(value, str) or not PREFIX_RE.fullmatch(value):
        raise InvalidField(field, "must be 1-16 of A-Z 0-9 starting with a letter")
    return value


def _has_control(text: str) -> bool:
    return any(
        unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\n\t" for ch in text
    )


def title(value: object, field: str = "title") -> str:
    """Return a stripped title: 1-200 printable characters on one line."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    text = value.strip()
    if not text:
        raise InvalidField(field, "must not be empty")
    if len(text) > MAX_TITLE:
        raise InvalidField(field, f"must be at most {MAX_TITLE} characters")
    if any(ch in text for ch in "\n\r\t\v\f\x85\u2028\u2029") or _has_control(text):
        raise InvalidField(field, "must not contain control characters")
    return text


def description(value: object, field: str = "description") -> str:
    """Return a description: free text without control characters other than newline/tab."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidField(field, f"must be at most {MAX_DESCRIPTION} characters")
    if _has_control(value):
        raise InvalidField(field, "must not contain control characters")
    return value


def slug(text: str) -> str:
    """Derive a branch-safe slug: a-z, 0-9 and single hyphens, at most 40 characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > MAX_SLUG:
            break
        out = candidate
    return out or "item"


def branch_for(item_id: str, item_title: str) -> str:
    """Return `feature/<ID>-<slug>` for a validated id and title."""
    name = f"feature/{work_item_id(item_id)}-{slug(item_title)}"
    return branch(name)


def branch(value: object, field: str = "branch") -> str:
    """Return `value` if it is a Conveyor feature branch name."""
    if not isinstance(value, str) or not BRANCH_RE.fullmatch(value) or ".." in value:
        raise InvalidField(field, "must be feature/<ID>-<slug> with a-z 0-9 and hyphens")
    return value


_MSGSPEC_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)
_MSGSPEC_MISSING = re.compile(r"^Object missing required field `(.*)`$", re.DOTALL)


def msgspec_error(message: str) -> tuple[str, str]:
    """Split msgspec's `problem - at `$.a.b[0]`` into (`a.b[0]`, `problem`).

    The path is empty for the top level; a missing field is named in the path
    and its problem is `missing`.
    """
    match = _MSGSPEC_AT.fullmatch(message)
    problem, path = (match.group(1), match.group(2) or "") if match else (message, "")
    path = path.lstrip(".")
    missing = _MSGSPEC_MISSING.fullmatch(problem)
    if missing:
        path = ".".join(part for part in (path, missing.group(1)) if part)
        problem = "missing"
    return path, problem
