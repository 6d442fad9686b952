"""Exit-code keeper: `python -m conveyor.runwrap --exit-file F -- AGENT ARGV...`.

The Launcher starts this wrapper as the leader of a new session; the agent is
its child in the same process group. When the agent ends, the wrapper writes
its exit code to F atomically, so the code survives the Launcher's own death
and a restarted Launcher can report it instead of re-running the agent.
SIGTERM to the group reaches the agent; the wrapper itself ignores it and stays
to record the result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conveyor.clock import SystemClock


def write_exit_file(path: Path, exit_code: int, finished_at: float) -> None:
    """Write `{exit_code, finished_at}` to `path` via rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"exit_code": exit_code, "finished_at": finished_at}))
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)


def read_exit_file(path: Path) -> tuple[int, float] | None:
    """Return `(exit_code, finished_at)` if the wrapper recorded one."""
    try:
        data = json.loads(path.read_text())
        return int(data["exit_code"]), float(data["finished_at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the agent, record its exit code, exit with it."""
    parser = argparse.ArgumentParser(prog="conveyor.runwrap")
    parser.add_argument("--exit-file", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The child must not inherit the ignored dispositions: restore defaults in it.
        proc = subprocess.Popen(command, preexec_fn=_default_signals)  # noqa: PLW1509 - no threads here
        code = proc.wait()
    except OSError as err:
        sys.stderr.write(f"conveyor.runwrap: cannot start {command[0]!r}: {err}\n")
        code = 127
    exit_code = 128 - code if code < 0 else code
    write_exit_file(args.exit_file, exit_code, SystemClock().now())
    return exit_code


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    raise SystemExit(main())
