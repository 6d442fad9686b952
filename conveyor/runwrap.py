"""Exit-code keeper: `python -I -S conveyor/runwrap.py --exit-file F -- AGENT ARGV...`.

The Launcher starts this wrapper as the leader of a new session; the agent is
its child in the same process group. When the agent ends, the wrapper writes
its exit code to F atomically, so the code survives the Launcher's own death
and a restarted Launcher can report it instead of re-running the agent.
SIGTERM to the group reaches the agent; the wrapper itself ignores it and stays
to record the result.

Every stage start pays for this interpreter, so it runs as a script without
`site` (`-I -S`) and imports only `os`, `signal`, `sys` and `time`: no
`conveyor` package, no `json`, `argparse` or `subprocess` (each pulls in `re`,
`typing`, `collections` or `pathlib`), which keeps its start-up near the interpreter's own.
"""

from __future__ import annotations

import os
import signal
import sys
import time

SCRIPT = os.path.abspath(__file__)
"""The wrapper's own path: it is started as this script, never as `-m`."""

MODULE = "conveyor.runwrap"
"""How wrappers started with `-m` show on a command line (still adopted)."""


def is_wrapper(cmdline: list[str]) -> bool:
    """Whether a process command line is this wrapper's, however it was started."""
    return any(
        arg == MODULE or arg.endswith(os.sep + os.path.join("conveyor", "runwrap.py"))
        for arg in cmdline
    )


def write_exit_file(path: os.PathLike[str] | str, exit_code: int, finished_at: float) -> None:
    """Write `{exit_code, finished_at}` to `path` via rename, so readers never see half."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp")
    # Two numbers: written by hand because importing json costs the wrapper `re`.
    body = f'{{"exit_code": {int(exit_code)}, "finished_at": {float(finished_at)!r}}}'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_exit_file(path: os.PathLike[str] | str) -> tuple[int, float] | None:
    """Return `(exit_code, finished_at)` if the wrapper recorded one."""
    # Imported here: only the Launcher and Reaper read, and the wrapper must not pay for it.
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return int(data["exit_code"]), float(data["finished_at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


USAGE = "usage: runwrap.py --exit-file FILE [--] COMMAND [ARG...]\n"


def parse(argv: list[str]) -> tuple[str, list[str]] | None:
    """`(exit_file, command)` from the wrapper's arguments, or None when they are wrong."""
    args = list(argv)
    if len(args) < 2 or args[0] != "--exit-file" or not args[1]:
        return None
    command = args[2:]
    if command[:1] == ["--"]:
        command = command[1:]
    return (args[1], command) if command else None


def main(argv: list[str] | None = None) -> int:
    """Run the agent, record its exit code, exit with it."""
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        sys.stderr.write(USAGE)
        return 2
    exit_file, command = parsed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = _run(command)
    exit_code = 128 - code if code < 0 else code
    write_exit_file(exit_file, exit_code, time.time())
    return exit_code


def _run(command: list[str]) -> int:
    """Fork and exec `command`; its exit code, negative for a signal, 127 if it cannot start."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only execs
        try:
            # The child must not inherit the wrapper's ignored dispositions, nor
            # the SIGPIPE/SIGXFSZ ones Python sets for itself (as Popen restores).
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            os.execvp(command[0], command)  # noqa: S606 - an argv, never a shell
        except OSError as err:
            os.write(2, f"conveyor.runwrap: cannot start {command[0]!r}: {err}\n".encode())
        os._exit(127)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    raise SystemExit(main())
