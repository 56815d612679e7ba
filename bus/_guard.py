"""Runs a nats-server for the process that started this one, and stops it when that
process ends, however it ends (``kill -9`` included).

Started by ``EmbeddedServer`` as ``python -I -S _guard.py nats-server ARGS...`` with
the read end of a pipe as its stdin: the starter holds the write end and never writes.
When the starter dies, the kernel closes its end and this reads end-of-file: it stops
the server with SIGTERM (a clean JetStream shutdown) and exits. On Linux the server is
also started with ``PR_SET_PDEATHSIG``, so it gets SIGTERM if this guard is killed
itself (the guard is single-threaded: the thread that forked is the process).

Signals sent to the guard (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are
passed to the server; the guard exits with the server's status (by the same signal
when a signal ended it). Standard library only: it runs without site-packages.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType

FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 60.0


def _die_with(guard: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the guard dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != guard:  # the guard died before prctl took effect
            os._exit(70)

    return preexec


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: _guard.py PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)  # a signal (SIGCHLD: the server ended) wakes the select
    signal.signal(signal.SIGCHLD, lambda _n, _f: None)
    server: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if server:
            server[0].send_signal(signum)
        else:
            early.append(signum)

    for sig in FORWARD:
        signal.signal(sig, forward)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
    server.append(proc)
    for signum in early:
        proc.send_signal(signum)
    owner = sys.stdin.fileno()
    while proc.poll() is None:
        ready, _, _ = select.select([owner, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        if owner in ready and not os.read(owner, 4096):  # the starter is gone
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            break
    code = proc.wait()
    if code < 0:  # end the same way, so the starter sees the server's own status
        signal.set_wakeup_fd(-1)
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
