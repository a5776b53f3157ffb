"""`stop_process_group`: a server that ignores SIGTERM is killed within the bound, with its group.

This is what keeps `bench_serve_load` from dying on its own clean-up: the naive baseline server,
with requests still queued, did not exit within 30 s of SIGTERM and the benchmark wrote no JSON.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from hazard.demo.local_ray import stop_process_group

# A parent and a child that both ignore SIGTERM; the parent prints the child's pid when both run.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True);"
    " time.sleep(120)"], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(120)
"""


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start(new_session: bool) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    child = int(proc.stdout.readline())
    return proc, child


def test_a_group_that_ignores_sigterm_is_killed_within_the_bound():
    proc, child = _start(new_session=True)
    try:
        t = time.monotonic()
        code = stop_process_group(proc, term_wait_s=1.0, kill_wait_s=5.0)
        took = time.monotonic() - t
        assert code == -signal.SIGKILL  # SIGTERM was ignored: it took the kill
        assert 1.0 <= took < 1.0 + 5.0  # waited the grace period, then killed within the bound
        deadline = time.monotonic() + 5
        while _pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(child), "the server's child survived the group kill"
    finally:
        for pid in (proc.pid, child):
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(5)


def test_a_process_that_exits_on_sigterm_is_not_waited_for():
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    t = time.monotonic()
    assert stop_process_group(proc, term_wait_s=10.0, kill_wait_s=5.0) == -signal.SIGTERM
    assert time.monotonic() - t < 5.0


def test_a_process_in_the_callers_group_is_signalled_alone():
    """Not a group leader: only the process is killed (the caller's group, this test run
    included, is left alone; its child is orphaned, not killed)."""
    proc, child = _start(new_session=False)
    try:
        assert os.getpgid(proc.pid) == os.getpgid(0)
        assert stop_process_group(proc, term_wait_s=0.5, kill_wait_s=5.0) == -signal.SIGKILL
        assert _pid_alive(child)  # only `proc` was signalled
    finally:
        if _pid_alive(child):
            os.kill(child, signal.SIGKILL)
