"""Reading a gate's inputs from the forge, off the StageEngine's thread (I/O)."""

from __future__ import annotations

from actors import gate_policy
from actors.gate_policy import GateInputs
from actors.task_policy import Task
from conveyor import pipeline
from gateways.forge import Forge

MAX_ARTIFACT_BYTES = 256 * 1024
MAX_ADRS = 20
MAX_CHECK_LOG_CHARS = 16 * 1024
"""The red check's output read for its brief (which keeps less still)."""


def read_gate_inputs(forge: Forge, task: Task, gate: str) -> GateInputs:
    """Read what `gate` needs from the forge at the branch head (I/O; never on the actor)."""
    try:
        head = forge.branch_head(task.repo, task.branch)
        if gate == pipeline.GATE_BRANCH_EXISTS or head is None:
            return GateInputs(branch_head=head)
        files: dict[str, str | None] = {}
        for name in gate_policy.GATE_FILES.get(gate, ()):
            path = pipeline.artifact_path(task.id, name)
            files[path] = _text(forge.read_file(task.repo, head, path))
        adr_files: dict[str, str] = {}
        if gate == "architecture_done":
            adr_dir = pipeline.artifact_path(task.id, pipeline.ADR_DIR)
            for name in sorted(forge.list_dir(task.repo, head, adr_dir))[:MAX_ADRS]:
                if name.endswith(".md"):
                    text = _text(forge.read_file(task.repo, head, f"{adr_dir}/{name}"))
                    if text is not None:
                        adr_files[name] = text
        ci_state, ci_description, ci_target_url, ci_log = None, "", "", ""
        if gate == "ci_green":
            status = forge.commit_status(task.repo, head)
            ci_state = status.state if status else None
            ci_description = f"{status.context}: {status.description}" if status else ""
            ci_target_url = status.target_url if status else ""
            if ci_state in ("failure", "error"):
                ci_log = forge.check_log(task.repo, head)[-MAX_CHECK_LOG_CHARS:]
        pr_merged = None
        if gate == pipeline.GATE_PR_MERGED:
            pull = forge.find_pull(task.repo, task.branch)
            # Merged means this head is merged: rework after a merge needs a new merge.
            pr_merged = bool(pull and pull.merged and pull.head_sha == head)
        return GateInputs(
            files=files,
            adr_files=adr_files,
            branch_head=head,
            ci_state=ci_state,
            ci_description=ci_description,
            ci_target_url=ci_target_url,
            ci_log=ci_log,
            pr_merged=pr_merged,
            visit_base=task.visit_base_sha if gate == "ci_green" else "",
        )
    except Exception as err:  # noqa: BLE001 - an unreadable forge means "wait", not a crash
        return GateInputs(error=f"{type(err).__name__}: {err}")


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data[:MAX_ARTIFACT_BYTES].decode("utf-8", errors="replace")
