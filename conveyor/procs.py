"""Waiting for processes without polling.

`Popen.wait(timeout)` and `psutil.Process.wait(timeout)` poll with sleeps that
grow to 50 ms, which adds that much latency to every agent and CI run. A pidfd
becomes readable the moment the process exits.
"""

from __future__ import annotations

import contextlib
import os
import select

import psutil


def wait_exit(pid: int, timeout_s: float | None) -> bool:
    """Block until `pid` exits (True) or `timeout_s` passes (False); never reaps it."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return _wait_psutil(pid, timeout_s)
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def _wait_psutil(pid: int, timeout_s: float | None) -> bool:
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        return True
    return True


def boot_id() -> str:
    """This machine's boot id: a process recorded under another boot is gone for good."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def alive(pid: int, create_time: float | None) -> bool:
    """True if `pid` is still the process started at `create_time` (not a reused pid)."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc = psutil.Process(pid)
        same = create_time is not None and abs(proc.create_time() - create_time) < 0.01
        return same and proc.status() != psutil.STATUS_ZOMBIE
    return False
