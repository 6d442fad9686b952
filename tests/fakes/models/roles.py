"""A fake model that plays every agent role: it reads the prompt and writes what the gate needs.

The prompt Conveyor renders starts `# <role> for <ID>: <title>` and says which stage and
visit it is (`actors/prompt_policy.py`); from those the script picks the files whose front
matter passes that stage's gate (`actors/gate_policy.py`). A request that carries no such
header (a CLI's own title or routing call) leaves the current role's writes in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from conveyor.pipeline import (
    ACCEPTANCE_CRITERIA,
    ADR_DIR,
    APPROVED,
    BRD,
    DEPLOY_LOG,
    REVIEW,
    STAGING_LOG,
    SUCCESS,
    TEST_PLAN,
    TEST_REPORT,
    TESTS_PASS,
    TRZ,
    artifact_path,
)
from tests.fakes.models.script import Script, WriteFile

_HEADER = re.compile(
    r"# (?P<role>[a-z]+) for (?P<item>[A-Z][A-Z0-9]*-\d+): .*?"
    r"Stage: (?P<stage>[a-z0-9-]+) \(visit (?P<visit>\d+)",
    re.DOTALL,
)


@dataclass(frozen=True)
class Seen:
    """One agent run as the model saw it: its role, item, stage and visit, and the prompt."""

    role: str
    item: str
    stage: str
    visit: int
    prompt: str


def _doc(item: str, kind: str, body: str) -> str:
    return f"---\ntype: {kind}\nwork_item_id: {item}\n---\n\n{body}\n"


def role_writes(role: str, item: str, stage: str, visit: int) -> list[WriteFile]:
    """The files that pass `stage`'s gate when `role` writes them on `visit`."""

    def at(name: str) -> str:
        return artifact_path(item, name)

    if role == "analyst":
        plan = f"work_item: {item}\ntests:\n  - id: TC-01\n    type: unit\n    expected: PASS\n"
        return [
            WriteFile(at(BRD), _doc(item, "brd", "# BRD\n\nDeliver the item.")),
            WriteFile(at(TRZ), _doc(item, "trz", "# TRZ\n\n- One new module.")),
            WriteFile(at(ACCEPTANCE_CRITERIA), _doc(item, "acceptance-criteria", "- AC-1")),
            WriteFile(at(TEST_PLAN), plan),
        ]
    if role == "architect":
        name = f"{ADR_DIR}/ADR-001-fake-model.md"
        return [WriteFile(at(name), _doc(item, "adr", "# ADR-001\n\nAdd one module."))]
    if role == "developer":
        # A new module per visit: the branch head moves, and the repository's tests stay green.
        module = f"fake_{item.lower().replace('-', '_')}_v{visit}.py"
        return [WriteFile(module, f'"""Written by the fake model."""\n\nVISIT = {visit}\n')]
    if role == "reviewer":
        front = f"---\ntype: review\nwork_item_id: {item}\nverdict: {APPROVED}\nversion: {visit}\n"
        body = f"---\n\n# Review v{visit}\n\n## Findings\n\n- none\n"
        return [WriteFile(at(REVIEW), front + body)]
    if role == "tester":
        front = f"---\ntype: test-report\nwork_item_id: {item}\nresult: {TESTS_PASS}\n---\n"
        return [WriteFile(at(TEST_REPORT), front + "\n| TC-01 | PASS |\n")]
    if role == "deployer":
        staging = "staging" in stage
        key, name = ("staging_status", STAGING_LOG) if staging else ("deploy_status", DEPLOY_LOG)
        return [WriteFile(at(name), f"---\n{key}: {SUCCESS}\nwork_item: {item}\n---\n\nDone.\n")]
    return []


@dataclass
class RoleScript(Script):
    """Answers each run with the writes its role's gate needs, then a final text.

    `runs` lists every run seen, in order, with the prompt as the model received it.
    """

    runs: list[Seen] = field(default_factory=list)

    def observe(self, raw: str) -> None:
        # The request body is JSON: the prompt's newlines arrive escaped.
        text = raw.replace("\\n", "\n")
        found = _HEADER.search(text)
        if found is None:
            return
        seen = Seen(
            found["role"], found["item"], found["stage"], int(found["visit"]), text[found.start() :]
        )
        last = self.runs[-1] if self.runs else None
        if last is not None and (last.role, last.item, last.stage, last.visit) == (
            seen.role,
            seen.item,
            seen.stage,
            seen.visit,
        ):
            return
        self.runs.append(seen)
        self.writes = role_writes(seen.role, seen.item, seen.stage, seen.visit)
        self.final_text = f"Done: {seen.role} wrote {len(self.writes)} file(s) for {seen.item}."

    def runs_of(self, role: str) -> list[Seen]:
        return [run for run in self.runs if run.role == role]
